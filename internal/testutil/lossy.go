package testutil

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
)

// Fault is what a Lossy network does to the next COMMIT it is armed for.
type Fault string

const (
	// LoseReply: the server gets the COMMIT and commits; its reply is
	// lost and the link broken.
	LoseReply Fault = "loseReply"
	// Swallow: the COMMIT never reaches the server, and the link to it
	// stays open, holding the transaction open (a half-open connection);
	// the client gives up at once, as at the end of its readTimeout.
	Swallow Fault = "swallow"
)

// Lossy is a network for the driver whose links, when armed, meet a Fault
// at the next COMMIT the client sends (alone, or at the end of a
// one-round-trip block), or at the next statement holding a marker of the
// test's choosing. While Down, new links are refused.
type Lossy struct {
	net, addr string
	armed     atomic.Value // Fault; "" when disarmed
	marker    atomic.Value // string: what the packet the fault meets holds
	down      atomic.Bool
	downAfter atomic.Bool // set down when the armed fault fires
	fired     atomic.Int32
	// OnFire, if set before the pool is used, runs when the armed fault
	// fires, before the COMMIT goes on (or is swallowed).
	OnFire func()
	mu     sync.Mutex
	held   []net.Conn // swallowed links, closed at the test's end
}

var lossyNets atomic.Int32

// NewLossy returns a Lossy network to the server of dsn, and dsn rewritten
// to use it. Swallowed links are closed when t ends.
func NewLossy(t testing.TB, dsn string) (*Lossy, string) {
	t.Helper()
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	l := &Lossy{net: cfg.Net, addr: cfg.Addr}
	l.armed.Store(Fault(""))
	l.marker.Store("COMMIT")
	t.Cleanup(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, c := range l.held {
			c.Close()
		}
	})
	cfg.Net = fmt.Sprintf("lossy%d", lossyNets.Add(1))
	mysql.RegisterDialContext(cfg.Net, l.dial)
	return l, cfg.FormatDSN()
}

// Arm makes the next COMMIT meet f; with down, the server is unreachable
// from then on, until SetDown(false).
func (l *Lossy) Arm(f Fault, down bool) {
	l.downAfter.Store(down)
	l.marker.Store("COMMIT")
	l.armed.Store(f)
}

// ArmAt makes the next statement that holds marker meet f.
func (l *Lossy) ArmAt(f Fault, marker string) {
	l.downAfter.Store(false)
	l.marker.Store(marker)
	l.armed.Store(f)
}

// SetDown refuses new links (true) or lets them through again.
func (l *Lossy) SetDown(down bool) { l.down.Store(down) }

// FiredOnce fails t unless the armed fault fired once since the last call.
func (l *Lossy) FiredOnce(t testing.TB) {
	t.Helper()
	if n := l.fired.Swap(0); n != 1 {
		t.Fatalf("the fault fired %d times, want once", n)
	}
}

func (l *Lossy) dial(ctx context.Context, _ string) (net.Conn, error) {
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

// fire disarms l and returns the fault a COMMIT in b meets, if any.
func (l *Lossy) fire(b []byte) Fault {
	if !bytes.Contains(b, []byte(l.marker.Load().(string))) {
		return ""
	}
	f := l.armed.Load().(Fault)
	if f == "" || !l.armed.CompareAndSwap(f, Fault("")) {
		return ""
	}
	l.fired.Add(1)
	if l.OnFire != nil {
		l.OnFire()
	}
	if l.downAfter.Load() {
		l.down.Store(true)
	}
	return f
}

type lossyConn struct {
	net.Conn
	l      *Lossy
	failed Fault // the fault this link met
}

func (c *lossyConn) Write(b []byte) (int, error) {
	if c.failed != "" {
		return 0, io.ErrClosedPipe
	}
	if c.failed = c.l.fire(b); c.failed == Swallow {
		c.l.mu.Lock()
		c.l.held = append(c.l.held, c.Conn)
		c.l.mu.Unlock()
		return len(b), nil
	}
	return c.Conn.Write(b)
}

func (c *lossyConn) Read(b []byte) (int, error) {
	switch c.failed {
	case LoseReply:
		time.Sleep(100 * time.Millisecond) // the server commits meanwhile
		c.Conn.Close()
		return 0, io.ErrUnexpectedEOF
	case Swallow:
		return 0, io.ErrUnexpectedEOF
	}
	return c.Conn.Read(b)
}

func (c *lossyConn) Close() error {
	if c.failed == Swallow {
		return nil // the server's end stays open
	}
	return c.Conn.Close()
}
