package testutil

import (
	"context"
	"log/slog"
	"sync/atomic"
)

// SettleLog is a slog.Handler that counts the lost commits a Store
// settled, by outcome (the Store logs each one).
type SettleLog struct {
	Committed, NotCommitted atomic.Int64
}

func (h *SettleLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *SettleLog) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *SettleLog) WithGroup(string) slog.Handler            { return h }
func (h *SettleLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "keystore: settled a lost commit" {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "committed" {
			if a.Value.Bool() {
				h.Committed.Add(1)
			} else {
				h.NotCommitted.Add(1)
			}
		}
		return true
	})
	return nil
}

// Settled returns how many lost commits were settled.
func (h *SettleLog) Settled() int64 { return h.Committed.Load() + h.NotCommitted.Load() }
