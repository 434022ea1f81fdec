package idempotency

import (
	"context"
	"strconv"
	"time"
)

// A RetryPolicy is the retry decision of a retry-safe client, for adapters
// other than [ClientInterceptor] (package connectv2's client, for one): which
// procedures get a key, how often and how long to wait, and which of the
// server library's answers mean "send it again". It is built from the same
// options as [ClientInterceptor] and decides as it does. It is safe for
// concurrent use.
type RetryPolicy struct {
	c *ClientInterceptor
}

// NewRetryPolicy returns the policy that opts configure ([WithMaxRetries],
// [WithBackoff], [WithIdempotencyHeader], [WithProcedureFilter]). It panics
// if an option cannot work.
func NewRetryPolicy(opts ...Option) *RetryPolicy {
	return &RetryPolicy{c: NewClientInterceptor(opts...)}
}

// KeyHeader is the name of the key header.
func (p *RetryPolicy) KeyHeader() string { return p.c.cfg.keyHeader }

// Guards reports whether the client keys and retries a unary procedure, as
// [Engine.Guards] decides on the server: by [WithProcedureFilter] when set,
// otherwise when the procedure is not safe to retry already (safe is true
// for the idempotency levels NO_SIDE_EFFECTS and IDEMPOTENT).
func (p *RetryPolicy) Guards(procedure string, safe bool) bool {
	if p.c.cfg.procFilter != nil {
		return p.c.cfg.procFilter(procedure)
	}
	return !safe
}

// MaxRetries is how many times a call is sent again after its first attempt.
func (p *RetryPolicy) MaxRetries() int { return p.c.cfg.maxRetries }

// Wait sleeps before retry number attempt+1 (attempt counts from 0): the
// server's hint when it gave one, never longer than the maximum backoff,
// otherwise exponential backoff with jitter. It reports false if ctx ended
// first.
func (p *RetryPolicy) Wait(ctx context.Context, attempt int, hint time.Duration) bool {
	return sleep(ctx, p.c.delay(attempt, hint))
}

// RetryHint reads the answer of a server's idempotency library: status is
// its [StatusHeader] value and retryAfter its Retry-After value. It reports
// whether the call may be sent again with its key (the key is in flight, or
// the store was unavailable) and the server's hint, zero when there is none.
// A handler's own answer has no status and is never retried.
func RetryHint(status, retryAfter string) (time.Duration, bool) {
	switch status {
	case StatusInFlight, StatusStoreUnavailable:
	default:
		return 0, false
	}
	secs, err := strconv.Atoi(retryAfter)
	if err != nil || secs < 0 {
		return 0, true
	}
	return time.Duration(secs) * time.Second, true
}
