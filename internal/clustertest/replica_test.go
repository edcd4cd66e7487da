package clustertest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/idsafe/keystore"
	"github.com/idsafe/keystore/internal/mariadb"
	"github.com/jmoiron/sqlx"
)

// replicaEnv is a fresh database on the shared primary, replicated, with a
// Store that reads from the replica as a SELECT-only user.
type replicaEnv struct {
	store       *keystore.Store
	primary     *sqlx.DB // root on the primary, for checks
	replicaRoot *sqlx.DB // root on the replica, for checks
	pair        *mariadb.Replicated
}

func newReplicaEnv(t *testing.T, pair *mariadb.Replicated, opts ...keystore.Option) replicaEnv {
	t.Helper()
	name := newDatabase(t, pair.Primary.DSN(""))
	primary := open(t, pair.Primary.DSN(name))
	reader := open(t, pair.ReaderDSN(name))
	store := newStore(t, primary, append([]keystore.Option{keystore.WithReplica(reader)}, opts...)...)
	waitCaughtUp(t, pair) // the replica has the schema
	return replicaEnv{store: store, primary: primary, replicaRoot: open(t, pair.Replica.DSN(name)), pair: pair}
}

func waitCaughtUp(t testing.TB, pair *mariadb.Replicated) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := pair.WaitCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
}

// pauseReplication stops the replica applying what the primary commits
// until the test ends.
func pauseReplication(t *testing.T, pair *mariadb.Replicated) {
	t.Helper()
	ctx := context.Background()
	if err := pair.PauseReplication(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pair.ResumeReplication(ctx); err != nil {
			t.Error(err)
		}
		waitCaughtUp(t, pair)
	})
}

// While the replica lags, 64 concurrent creators of keys for one new owner
// all succeed with one identity, and each new key verifies at once: the
// write path never reads the replica, and a replica miss asks the primary.
func TestLaggingReplicaHotBurst(t *testing.T) {
	env := newReplicaEnv(t, replicated(t))
	pauseReplication(t, env.pair)
	ctx := context.Background()
	const workers = 64
	perms := []string{"lag.read", "lag.write"}
	created := make([]keystore.CreatedKey, workers)
	failOnErrors(t, parallel(workers, func(i int) (err error) {
		created[i], err = env.store.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
			ExternalID: "lagging-owner", Permissions: perms})
		return err
	}))
	if n := count(t, env.primary, `SELECT COUNT(*) FROM keystore_identities WHERE external_id = 'lagging-owner'`); n != 1 {
		t.Fatalf("%d identities on the primary, want 1", n)
	}
	if n := count(t, env.primary, `SELECT COUNT(*) FROM keystore_keys k JOIN keystore_identities i ON i.id = k.identity_id
		WHERE i.external_id = 'lagging-owner' AND JSON_LENGTH(k.permissions) = 2`); n != workers {
		t.Fatalf("%d complete keys of the owner on the primary, want %d", n, workers)
	}
	if n := count(t, env.replicaRoot, `SELECT COUNT(*) FROM keystore_keys`); n != 0 {
		t.Fatalf("the replica has %d keys: it was not lagging", n)
	}
	for _, c := range created {
		v, err := env.store.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: c.Key})
		if err != nil || !v.Valid || v.IdentityID != c.IdentityID || v.ExternalID != "lagging-owner" || len(v.Permissions) != 2 {
			t.Fatalf("VerifyKey of a key just created: %+v, %v", v, err)
		}
		if k, err := env.store.GetKey(ctx, "ws", c.KeyID); err != nil || k.ExternalID != "lagging-owner" {
			t.Fatalf("GetKey of a key just created: %+v, %v", k, err)
		}
	}
	if id, err := env.store.FindIdentity(ctx, "ws", "lagging-owner"); err != nil || id.ID != created[0].IdentityID {
		t.Fatalf("FindIdentity of an identity just created: %+v, %v", id, err)
	}
}

// While the replica lags, 32 concurrent UpdateKey calls linking 32 keys to
// one new owner all succeed with one identity.
func TestLaggingReplicaLinkStorm(t *testing.T) {
	env := newReplicaEnv(t, replicated(t))
	ctx := context.Background()
	const workers = 32
	keys := make([]string, workers)
	for i := range keys {
		c, err := env.store.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks"})
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = c.KeyID
	}
	pauseReplication(t, env.pair)
	updated := make([]keystore.Key, workers)
	failOnErrors(t, parallel(workers, func(i int) (err error) {
		updated[i], err = env.store.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: keys[i],
			ExternalID: keystore.Set("storm-owner"), Permissions: keystore.Set([]string{"storm.perm"})})
		return err
	}))
	if n := count(t, env.primary, `SELECT COUNT(*) FROM keystore_identities WHERE external_id = 'storm-owner'`); n != 1 {
		t.Fatalf("%d identities on the primary, want 1", n)
	}
	for i, k := range updated {
		if k.ExternalID != "storm-owner" || k.IdentityID != updated[0].IdentityID || len(k.Permissions) != 1 {
			t.Fatalf("key %d updated to %+v", i, k)
		}
	}
	if n := count(t, env.replicaRoot, `SELECT COUNT(*) FROM keystore_identities`); n != 0 {
		t.Fatalf("the replica has %d identities: it was not lagging", n)
	}
}

// A key disabled while the replica lags reads as it was, as documented,
// except where the caller asks for the primary or credits are spent (on the
// primary, which knows better).
func TestLaggingReplicaStaleness(t *testing.T) {
	env := newReplicaEnv(t, replicated(t))
	ctx := context.Background()
	free, err := env.store.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks"})
	if err != nil {
		t.Fatal(err)
	}
	paid, err := env.store.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
		Credits: &keystore.Credits{Remaining: 5}})
	if err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, env.pair)
	pauseReplication(t, env.pair)
	for _, id := range []string{free.KeyID, paid.KeyID} {
		if _, err := env.store.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: id, Enabled: keystore.Set(false)}); err != nil {
			t.Fatal(err)
		}
	}
	verify := func(ctx context.Context, key string) keystore.VerificationCode {
		t.Helper()
		v, err := env.store.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: key})
		if err != nil {
			t.Fatal(err)
		}
		return v.Code
	}
	primary := keystore.ContextWithPrimaryRead(ctx)
	if code := verify(ctx, free.Key); code != keystore.CodeValid {
		t.Fatalf("key without credits, replica read: %s; the replica still has it enabled, so VALID was expected", code)
	}
	if code := verify(primary, free.Key); code != keystore.CodeDisabled {
		t.Fatalf("key without credits, primary read: %s, want DISABLED", code)
	}
	if code := verify(ctx, paid.Key); code != keystore.CodeDisabled {
		t.Fatalf("key with credits: %s, want DISABLED (the spend is checked on the primary)", code)
	}
	if n := count(t, env.primary, `SELECT remaining FROM keystore_keys WHERE id = ?`, paid.KeyID); n != 5 {
		t.Fatalf("a disabled key was charged: %d credits left, want 5", n)
	}
	if k, err := env.store.GetKey(ctx, "ws", free.KeyID); err != nil || !k.Enabled {
		t.Fatalf("GetKey from the lagging replica: %+v, %v; want the stale, enabled key", k, err)
	}
	if k, err := env.store.GetKey(primary, "ws", free.KeyID); err != nil || k.Enabled {
		t.Fatalf("GetKey from the primary: %+v, %v; want the disabled key", k, err)
	}

	// The other way round: the replica says disabled, or out of credits,
	// and the primary knows better: VerifyKey asks it before saying no.
	env.pair.ResumeReplication(ctx)
	waitCaughtUp(t, env.pair)
	empty, err := env.store.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks",
		Credits: &keystore.Credits{Remaining: 0}})
	if err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, env.pair)
	if err := env.pair.PauseReplication(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := env.store.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: free.KeyID, Enabled: keystore.Set(true)}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.store.UpdateKey(ctx, keystore.UpdateKeyRequest{WorkspaceID: "ws", KeyID: empty.KeyID,
		Credits: keystore.Set(keystore.Credits{Remaining: 3})}); err != nil {
		t.Fatal(err)
	}
	if k, err := env.store.GetKey(ctx, "ws", free.KeyID); err != nil || k.Enabled {
		t.Fatalf("GetKey from the lagging replica: %+v, %v; want the stale, disabled key", k, err)
	}
	if code := verify(ctx, free.Key); code != keystore.CodeValid {
		t.Fatalf("key re-enabled during the lag: %s, want VALID", code)
	}
	if code := verify(ctx, empty.Key); code != keystore.CodeValid {
		t.Fatalf("key given credits during the lag: %s, want VALID", code)
	}
	if n := count(t, env.primary, `SELECT remaining FROM keystore_keys WHERE id = ?`, empty.KeyID); n != 2 {
		t.Fatalf("%d credits left after one verification of 3, want 2", n)
	}
}

// A replica that is down, or hung, costs at most the configured timeout;
// the primary answers every read.
func TestReplicaDownOrHung(t *testing.T) {
	ctx := context.Background()
	t.Run("hung", func(t *testing.T) {
		const timeout = 300 * time.Millisecond
		env := newReplicaEnv(t, replicated(t), keystore.WithReplicaTimeout(timeout))
		c, err := env.store.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "o"})
		if err != nil {
			t.Fatal(err)
		}
		waitCaughtUp(t, env.pair)
		if err := env.pair.Replica.Freeze(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := env.pair.Replica.Thaw(); err != nil {
				t.Error(err)
			}
		})
		start := time.Now()
		k, err := env.store.GetKey(ctx, "ws", c.KeyID)
		if took := time.Since(start); err != nil || k.ID != c.KeyID || took > timeout+2*time.Second {
			t.Fatalf("GetKey with the replica hung: %v after %v; want the key after about %v", err, took, timeout)
		}
		// The replica is skipped for a while: the next reads do not wait.
		start = time.Now()
		v, err := env.store.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: c.Key})
		if took := time.Since(start); err != nil || !v.Valid || took >= timeout {
			t.Fatalf("VerifyKey right after: %+v, %v after %v; want VALID without waiting for the replica", v, err, took)
		}
	})
	t.Run("stopped", func(t *testing.T) {
		startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		own, err := mariadb.StartReplicated(startCtx)
		if err != nil {
			t.Fatal(err)
		}
		defer own.Stop()
		env := newReplicaEnv(t, own)
		c, err := env.store.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "ks", ExternalID: "o"})
		if err != nil {
			t.Fatal(err)
		}
		waitCaughtUp(t, own)
		if err := own.Replica.Stop(); err != nil {
			t.Fatal(err)
		}
		for i := range 3 { // the first finds it down; the next skip it; all are answered
			if k, err := env.store.GetKey(ctx, "ws", c.KeyID); err != nil || k.ExternalID != "o" {
				t.Fatalf("GetKey %d with the replica stopped: %+v, %v", i, k, err)
			}
			if v, err := env.store.VerifyKey(ctx, keystore.VerifyKeyRequest{KeySpaceID: "ks", Key: c.Key}); err != nil || !v.Valid {
				t.Fatalf("VerifyKey %d with the replica stopped: %+v, %v", i, v, err)
			}
			if p, err := env.store.ListKeys(ctx, keystore.ListKeysRequest{WorkspaceID: "ws", KeySpaceID: "ks"}); err != nil || len(p.Items) != 1 {
				t.Fatalf("ListKeys %d with the replica stopped: %d keys, %v", i, len(p.Items), err)
			}
			if _, err := env.store.CreateKey(ctx, keystore.CreateKeyRequest{WorkspaceID: "ws", KeySpaceID: "other", ExternalID: fmt.Sprint("o", i)}); err != nil {
				t.Fatalf("CreateKey %d with the replica stopped: %v", i, err)
			}
			time.Sleep(600 * time.Millisecond) // past the skip, now and then
		}
	})
}
