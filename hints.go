package keystore

import "sync"

// identityHints remembers the identities this Store has committed links to
// (external id -> identity id), to choose CreateKey's first statement: for
// an identity seen before, the key's INSERT reads the owner itself; for one
// never seen, the identity's INSERT goes first. A hint is a guess and
// nothing more: a wrong one costs a statement or two (an identity created
// by another process: the identity's INSERT that finds it; one deleted
// since: the key's INSERT that inserts nothing, then a read). It is safe
// for concurrent use.
type identityHints struct {
	mu   sync.Mutex
	seen map[string]string
}

// maxIdentityHints bounds the memory: when full, the hints start over.
const maxIdentityHints = 50_000

func hintKey(workspaceID, externalID string) string { return workspaceID + "\x00" + externalID }

// get returns the identity id last seen for externalID; a nil
// *identityHints has seen nothing and learns nothing.
func (h *identityHints) get(workspaceID, externalID string) (string, bool) {
	if h == nil {
		return "", false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	id, ok := h.seen[hintKey(workspaceID, externalID)]
	return id, ok
}

// add remembers identityID, which a committed transaction linked to.
func (h *identityHints) add(workspaceID, externalID, identityID string) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.seen == nil || len(h.seen) >= maxIdentityHints {
		h.seen = make(map[string]string)
	}
	h.seen[hintKey(workspaceID, externalID)] = identityID
}

// forget drops a hint that proved wrong.
func (h *identityHints) forget(workspaceID, externalID string) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.seen, hintKey(workspaceID, externalID))
}
