package idempotency

import "time"

// AdvanceRenewals moves the clock of e's renewal queue forward by d and
// starts, before it returns, the renewals that are then due, as the queue's
// timers would once d had passed. Tests use it to renew leases without
// waiting for them.
func AdvanceRenewals(e *Engine, d time.Duration) {
	r := e.renewals
	r.skew.Add(int64(d))
	for i := range r.shards {
		r.fire(&r.shards[i])
	}
}
