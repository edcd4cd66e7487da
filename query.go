package keystore

import (
	"slices"
	"strings"
)

// limitQueryChars is the longest permission query VerifyKey accepts.
const limitQueryChars = 1000

// A permission query names permissions joined by AND and OR (in any letter
// case), with parentheses; AND binds tighter than OR, and there is no NOT.
// A name is a run of letters, digits and . _ - : * / ("*" is a literal
// character, not a wildcard), so "a.read AND (b.write OR c:*)" asks for
// a.read and for b.write or c:*.
//
// The query is evaluated while it is parsed, by recursive descent over the
// string: nothing is allocated, and every name is looked up in the key's
// sorted permissions by binary search.

// matchPermissions reports whether the key holding perms (sorted, as
// Key.Permissions) satisfies query. A malformed query is a
// *ValidationError naming field.
func matchPermissions(field, query string, perms []string) (bool, error) {
	if len(query) > limitQueryChars {
		return false, invalid(field, "must be at most %d characters", limitQueryChars)
	}
	p := queryParser{query: query, perms: perms}
	ok := p.or()
	if p.err == "" && p.peek() != tokenEnd {
		p.fail("expected AND, OR or the end")
	}
	if p.err != "" {
		return false, invalid(field, "malformed permission query at character %d: %s", p.errAt+1, p.err)
	}
	return ok, nil
}

// queryParser is the state of one evaluation.
type queryParser struct {
	query string
	pos   int      // the next byte to read
	perms []string // sorted
	err   string   // the first error; once set, parsing winds down
	errAt int
	// The token at pos, once scanned: its kind, text and end.
	ahead     token
	aheadText string
	aheadEnd  int
	scanned   bool
}

type token int

const (
	tokenEnd token = iota
	tokenName
	tokenAnd
	tokenOr
	tokenOpen
	tokenClose
	tokenBad
)

// or parses and evaluates term {OR term}.
func (p *queryParser) or() bool {
	ok := p.and()
	for p.err == "" && p.peek() == tokenOr {
		p.next()
		ok = p.and() || ok // parse the right side whatever the left gave
	}
	return ok
}

// and parses and evaluates factor {AND factor}.
func (p *queryParser) and() bool {
	ok := p.factor()
	for p.err == "" && p.peek() == tokenAnd {
		p.next()
		ok = p.factor() && ok
	}
	return ok
}

// factor parses and evaluates a name or a parenthesised query.
func (p *queryParser) factor() bool {
	switch p.peek() {
	case tokenName:
		name := p.next()
		_, found := slices.BinarySearch(p.perms, name)
		return found
	case tokenOpen:
		p.next()
		ok := p.or()
		if p.err == "" {
			if p.peek() != tokenClose {
				p.fail("expected )")
				return false
			}
			p.next()
		}
		return ok
	case tokenEnd:
		p.fail("expected a permission name or (, found the end")
	case tokenBad:
		p.fail("a permission name has only letters, digits and . _ - : * /")
	default:
		p.fail("expected a permission name or (")
	}
	return false
}

func (p *queryParser) fail(msg string) {
	if p.err == "" {
		p.err, p.errAt = msg, p.pos
		p.skipSpace()
		p.errAt = p.pos
	}
}

func (p *queryParser) skipSpace() {
	for p.pos < len(p.query) && (p.query[p.pos] == ' ' || p.query[p.pos] == '\t' || p.query[p.pos] == '\n' || p.query[p.pos] == '\r') {
		p.pos++
	}
}

// peek returns the kind of the next token without consuming it.
func (p *queryParser) peek() token {
	if !p.scanned {
		p.ahead, p.aheadText, p.aheadEnd = p.scan()
		p.scanned = true
	}
	return p.ahead
}

// next consumes the next token and returns its text.
func (p *queryParser) next() string {
	p.peek()
	p.pos, p.scanned = p.aheadEnd, false
	return p.aheadText
}

// scan reads the token at p.pos (after spaces): its kind, its text and
// where it ends.
func (p *queryParser) scan() (token, string, int) {
	p.skipSpace()
	i := p.pos
	if i == len(p.query) {
		return tokenEnd, "", i
	}
	switch p.query[i] {
	case '(':
		return tokenOpen, "(", i + 1
	case ')':
		return tokenClose, ")", i + 1
	}
	end := i
	for end < len(p.query) && isSlugByte(p.query[end]) {
		end++
	}
	if end == i {
		return tokenBad, "", i
	}
	word := p.query[i:end]
	switch {
	case strings.EqualFold(word, "and"):
		return tokenAnd, word, end
	case strings.EqualFold(word, "or"):
		return tokenOr, word, end
	}
	return tokenName, word, end
}
