package keystore

import (
	"context"
	"fmt"
	"sync"
)

// identityHints remembers identities this Store knows to be committed, found
// or linked to (external id -> identity id), to choose CreateKey's first statement: for
// an identity seen before, the key's INSERT reads the owner itself; for one
// never seen, the identity's INSERT goes first (on MySQL, a read of its id).
// A hint is a guess and nothing more: a wrong one costs a round trip or two
// (an identity created by another process: the identity's INSERT that finds
// it; one deleted since: the key's INSERT that inserts nothing, on MariaDB
// once in a block and once more in the transaction that follows, then a
// read). It is safe for concurrent use.
type identityHints struct {
	mu      sync.Mutex
	seen    map[string]string
	pending map[string]chan struct{} // closed when that creation ends
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

// add remembers identityID, an identity known to be committed; "" (no
// owner) is not remembered.
func (h *identityHints) add(workspaceID, externalID, identityID string) {
	if h == nil || identityID == "" {
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

// claim lets one call at a time create an identity this Store has not seen,
// so that a burst of calls for one new externalID in this process does not
// race on the server. The first call claims it and gets a release function,
// which it must call when its transaction ended (after add, if it
// committed), and may call earlier through found; calling release again
// does nothing. Later calls wait for that, off the database (holding no
// connection and no lock), and then go on with the hint the first one left;
// they get a nil release. A call that waited does not claim: if the first
// call failed, the rest race on the server as callers in other processes
// always do, which the identity protocol makes safe. ctx ends the wait.
func (h *identityHints) claim(ctx context.Context, workspaceID, externalID string) (release func(), err error) {
	k := hintKey(workspaceID, externalID)
	h.mu.Lock()
	if _, ok := h.seen[k]; ok {
		h.mu.Unlock()
		return nil, nil
	}
	if ch, ok := h.pending[k]; ok {
		h.mu.Unlock()
		select {
		case <-ch:
			return nil, nil
		case <-ctx.Done():
			return nil, fmt.Errorf("keystore: %w (waiting for this Store's creation of the identity)", ctx.Err())
		}
	}
	if h.pending == nil {
		h.pending = make(map[string]chan struct{})
	}
	ch := make(chan struct{})
	h.pending[k] = ch
	h.mu.Unlock()
	return sync.OnceFunc(func() {
		h.mu.Lock()
		delete(h.pending, k)
		h.mu.Unlock()
		close(ch)
	}), nil
}

// found records that the identity claimed with release exists, committed
// by another transaction, and lets the calls waiting for it go on now
// rather than when this call's transaction ends (CreateKey's may wait for
// role locks and retry). release may be nil (nothing claimed).
func (h *identityHints) found(release func(), workspaceID, externalID, identityID string) {
	if release != nil {
		h.add(workspaceID, externalID, identityID)
		release()
	}
}
