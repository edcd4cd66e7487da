package keystore

import "time"

// creditState is what refill arithmetic needs of a key.
type creditState struct {
	remaining  int64
	interval   RefillInterval // "" when the key is never refilled
	amount     int64
	day        int
	refilledAt time.Time
}

func (r keyRow) state() creditState {
	return creditState{remaining: r.Remaining.Int64, interval: RefillInterval(r.RefillInterval.String),
		amount: r.RefillAmount.Int64, day: int(r.RefillDay.Int64), refilledAt: r.RefilledAt.Time}
}

// periodStart returns the start of the refill period that contains now:
// 00:00 UTC today for a daily refill; for a monthly one, 00:00 UTC on the
// refill day of this month or, if that is still ahead, of the previous
// month, the day clamped to the month's length (day 31 in February is the
// 28th or 29th). Without a refill it returns the zero time, which no
// refilled_at precedes.
func (c creditState) periodStart(now time.Time) time.Time {
	now = now.UTC()
	y, m, d := now.Date()
	switch c.interval {
	case RefillDaily:
		return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
	case RefillMonthly:
		start := refillDay(y, m, c.day)
		if start.After(now) {
			start = refillDay(y, m-1, c.day)
		}
		return start
	}
	return time.Time{}
}

// refillDay is 00:00 UTC on day of month m of year y, clamped to the last
// day of that month (m may be 0, meaning December of y-1).
func refillDay(y int, m time.Month, day int) time.Time {
	last := time.Date(y, m+1, 0, 0, 0, 0, 0, time.UTC).Day()
	return time.Date(y, m, min(day, last), 0, 0, 0, 0, time.UTC)
}

// balance returns the credits available at now: the refill amount when a
// refill is due, else what remains.
func (c creditState) balance(now time.Time) int64 {
	if c.interval != "" && c.refilledAt.Before(c.periodStart(now)) {
		return c.amount
	}
	return c.remaining
}
