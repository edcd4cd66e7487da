package keystore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/keystoretest"
	"github.com/jmoiron/sqlx"
)

// lossy is a network for the driver whose links lose, on request, what
// goes with the next COMMIT the client sends (alone, or at the end of a
// one-round-trip block):
//   - loseReply: the server gets the COMMIT and commits; its reply is
//     lost and the link broken.
//   - swallow: the COMMIT never reaches the server, and the link to it
//     stays open, holding the transaction open (a half-open connection);
//     the client gives up at once, as at the end of its readTimeout.
//
// While down is set, new links are refused (the server is unreachable).
type lossy struct {
	net, addr string
	mode      atomic.Value // "", "loseReply" or "swallow": armed for the next COMMIT
	down      atomic.Bool
	downAfter atomic.Bool // set down when the armed fault fires
	fired     atomic.Int32
	mu        sync.Mutex
	held      []net.Conn // swallowed links, closed at the test's end
}

var lossyNets atomic.Int32

// lossyStore returns a Store on a pool whose links go through a lossy
// network to the test server, and a direct pool for checks.
func lossyStore(t *testing.T, opts ...keystore.Option) (*keystore.Store, *lossy, *sqlx.DB) {
	t.Helper()
	dsn := keystoretest.DSN(t)
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	l := &lossy{net: cfg.Net, addr: cfg.Addr}
	l.mode.Store("")
	t.Cleanup(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, c := range l.held {
			c.Close()
		}
	})
	name := fmt.Sprintf("lossy%d", lossyNets.Add(1))
	mysql.RegisterDialContext(name, l.dial)
	cfg.Net = name
	s, _ := storeOn(t, cfg.FormatDSN(), 4, opts...)
	_, direct := storeOn(t, dsn, 2)
	return s, l, direct
}

// arm makes the next COMMIT meet mode; with down, the server is
// unreachable from then on.
func (l *lossy) arm(mode string, down bool) {
	l.downAfter.Store(down)
	l.mode.Store(mode)
}

// firedOnce fails t unless the armed fault fired once since the last
// call.
func (l *lossy) firedOnce(t *testing.T) {
	t.Helper()
	if n := l.fired.Swap(0); n != 1 {
		t.Fatalf("the fault fired %d times, want once", n)
	}
}

func (l *lossy) dial(ctx context.Context, _ string) (net.Conn, error) {
	if l.down.Load() {
		return nil, errors.New("lossy: server unreachable")
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, l.net, l.addr)
	if err != nil {
		return nil, err
	}
	return &lossyConn{Conn: c, l: l}, nil
}

type lossyConn struct {
	net.Conn
	l      *lossy
	failed string // the fault this link met
}

func (c *lossyConn) Write(b []byte) (int, error) {
	if c.failed != "" {
		return 0, io.ErrClosedPipe
	}
	if bytes.Contains(b, []byte("COMMIT")) {
		if mode := c.l.mode.Load().(string); mode != "" && c.l.mode.CompareAndSwap(mode, "") {
			c.failed = mode
			c.l.fired.Add(1)
			if c.l.downAfter.Load() {
				c.l.down.Store(true)
			}
			if mode == "swallow" {
				c.l.mu.Lock()
				c.l.held = append(c.l.held, c.Conn)
				c.l.mu.Unlock()
				return len(b), nil
			}
		}
	}
	return c.Conn.Write(b)
}

func (c *lossyConn) Read(b []byte) (int, error) {
	switch c.failed {
	case "loseReply":
		time.Sleep(100 * time.Millisecond) // the server commits meanwhile
		c.Conn.Close()
		return 0, io.ErrUnexpectedEOF
	case "swallow":
		return 0, io.ErrUnexpectedEOF
	}
	return c.Conn.Read(b)
}

func (c *lossyConn) Close() error {
	if c.failed == "swallow" {
		return nil // the server's end stays open
	}
	return c.Conn.Close()
}

// openTransactions counts the transactions open on the server in db's
// database's server.
func openTransactions(t *testing.T, db *sqlx.DB) int {
	return count(t, db, `SELECT COUNT(*) FROM information_schema.INNODB_TRX`)
}

// A commit whose reply is lost, or which never reached the server over a
// link left half-open, is settled before the call returns: every call
// succeeds, and its writes are there exactly once. Over both ways of
// sending (one round trip, statement by statement) and both kinds of
// receipt.
func TestSettleLostCommit(t *testing.T) {
	for _, audit := range []bool{true, false} {
		for _, mode := range []string{"loseReply", "swallow"} {
			t.Run(fmt.Sprintf("audit=%v/%s", audit, mode), func(t *testing.T) {
				var opts []keystore.Option
				if !audit {
					opts = append(opts, keystore.WithoutAudit())
				}
				var retries atomic.Int32
				opts = append(opts, keystore.WithRetryOptions(keystore.OnRetry(func(int, error) { retries.Add(1) })))
				s, l, direct := lossyStore(t, opts...)
				ctx := context.Background()
				for _, perms := range [][]string{nil, {"a.read"}} { // one round trip on MariaDB; statements
					l.arm(mode, false)
					k, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
						ExternalID: "u", Permissions: perms, Credits: &keystore.Credits{Remaining: 10}})
					if err != nil {
						t.Fatalf("CreateKey %v: %v", perms, err)
					}
					l.firedOnce(t)
					if n := count(t, direct, `SELECT COUNT(*) FROM keystore_keys WHERE id = ?`, k.KeyID); n != 1 {
						t.Errorf("CreateKey %v succeeded; %d keys of its id", perms, n)
					}
					l.arm(mode, false)
					if _, err := s.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: k.KeyID,
						AddCredits: 5}); err != nil {
						t.Fatalf("UpdateKey: %v", err)
					}
					l.firedOnce(t)
					if n := count(t, direct, `SELECT remaining FROM keystore_keys WHERE id = ?`, k.KeyID); n != 15 {
						t.Errorf("after adding 5 credits to 10 once: %d", n)
					}
				}
				want := map[string]int{"loseReply": 0, "swallow": 4}[mode] // not committed: run again
				if n := int(retries.Load()); n != want {
					t.Errorf("%d retries, want %d", n, want)
				}
				if n := count(t, direct, `SELECT COUNT(*) FROM keystore_identities`); n != 1 {
					t.Errorf("%d identities, want 1", n)
				}
				if n := openTransactions(t, direct); n != 0 {
					t.Errorf("%d transactions still open on the server", n)
				}
			})
		}
	}
}

// When the server cannot be reached for the whole settle timeout, the
// error matches ErrAmbiguousCommit and carries the receipt and the key's
// id; Store.Settle, once the server is back, tells the truth.
func TestSettleLater(t *testing.T) {
	for _, mode := range []string{"loseReply", "swallow"} {
		t.Run(mode, func(t *testing.T) {
			s, l, direct := lossyStore(t, keystore.WithSettleTimeout(300*time.Millisecond))
			ctx := context.Background()
			if _, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks"}); err != nil {
				t.Fatal(err)
			}
			l.arm(mode, true)
			start := time.Now()
			_, err := s.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", Permissions: []string{"p"}})
			var unknown *keystore.AmbiguousCommitError
			if !errors.As(err, &unknown) || !errors.Is(err, keystore.ErrAmbiguousCommit) {
				t.Fatalf("err = %v, want an *AmbiguousCommitError", err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("the call returned after %v; the settle timeout is 300ms", d)
			}
			if unknown.Receipt == nil || unknown.KeyID == "" {
				t.Fatalf("error without receipt or key id: %+v", unknown)
			}
			l.down.Store(false)
			committed, err := s.Settle(ctx, *unknown.Receipt)
			if err != nil {
				t.Fatalf("Settle: %v", err)
			}
			keys := count(t, direct, `SELECT COUNT(*) FROM keystore_keys WHERE id = ?`, unknown.KeyID)
			if want := mode == "loseReply"; committed != want || keys != map[bool]int{true: 1}[want] {
				t.Errorf("Settle = %v with %d keys of the id; want %v", committed, keys, want)
			}
			if n := openTransactions(t, direct); n != 0 {
				t.Errorf("%d transactions still open on the server after Settle", n)
			}
			time.Sleep(100 * time.Millisecond)
			if again := count(t, direct, `SELECT COUNT(*) FROM keystore_keys WHERE id = ?`, unknown.KeyID); again != keys {
				t.Errorf("the key's count changed after Settle: %d, then %d", keys, again)
			}
		})
	}
}

func TestSettleRejectsBadReceipts(t *testing.T) {
	s, _ := newStore(t)
	for _, r := range []keystore.Receipt{{}, {ID: "key_1", Server: "h:1"}, {ID: "evt_1"}} {
		if _, err := s.Settle(context.Background(), r); !errors.Is(err, keystore.ErrInvalidInput) {
			t.Errorf("Settle(%+v) = %v, want ErrInvalidInput", r, err)
		}
	}
}
