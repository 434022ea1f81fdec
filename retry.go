package idempotency

import (
	"context"
	"math/rand/v2"
	"strconv"
	"time"
)

// A RetryPolicy is the retry-safe client of SPEC §10 without its
// framework, for client adapters such as [ClientInterceptor] and the
// client interceptor of package grpcmw: which procedures get a key, under
// which header, which failures are sent again and how long to wait first.
// It reads the key header, [WithProcedureFilter], [WithMaxRetries] and
// [WithBackoff], and ignores the other options. It is safe for concurrent
// use.
type RetryPolicy struct {
	cfg *config
}

// NewRetryPolicy returns the policy that opts configure. It panics if an
// option cannot work.
func NewRetryPolicy(opts ...Option) *RetryPolicy {
	return &RetryPolicy{cfg: newConfig(opts)}
}

// KeyHeader is the name of the header, or metadata key, that carries the
// key ([WithIdempotencyHeader]).
func (p *RetryPolicy) KeyHeader() string { return p.cfg.keyHeader }

// Guards reports whether a client keys and retries a unary procedure,
// named "/pkg.Service/Method": as [Engine.Guards] decides for servers.
func (p *RetryPolicy) Guards(procedure string, safe bool) bool {
	return p.cfg.guardsProcedure(procedure, safe)
}

// MaxRetries is how many times a call may be sent again.
func (p *RetryPolicy) MaxRetries() int { return p.cfg.maxRetries }

// Wait waits before retry number attempt+1 (see [RetryPolicy.Delay]), or
// until ctx ends; it reports whether the wait ran its course.
func (p *RetryPolicy) Wait(ctx context.Context, attempt int, hint time.Duration) bool {
	return sleep(ctx, p.cfg.backoff(attempt, hint))
}

// Delay is the wait before retry number attempt+1 (attempt counts from
// zero): exponential with jitter, or the server's hint, never above the
// maximum backoff.
func (p *RetryPolicy) Delay(attempt int, hint time.Duration) time.Duration {
	return p.cfg.backoff(attempt, hint)
}

// RetryHint reports whether a call that the server's idempotency
// library refused, with the [StatusHeader] value label, may be sent again
// with its key (in flight, or the store unavailable), and the wait that
// retryAfter, a Retry-After value in whole seconds, asks for (zero when
// there is none).
func RetryHint(label, retryAfter string) (time.Duration, bool) {
	switch label {
	case StatusInFlight, StatusStoreUnavailable:
		secs, err := strconv.Atoi(retryAfter)
		if err != nil || secs < 0 {
			return 0, true
		}
		return time.Duration(secs) * time.Second, true
	}
	return 0, false
}

// guardsProcedure is the decision of [Engine.Guards] and
// [RetryPolicy.Guards].
func (c *config) guardsProcedure(procedure string, safe bool) bool {
	if c.procFilter != nil {
		return c.procFilter(procedure)
	}
	return !safe
}

// backoff is the wait before retry number attempt+1: exponential with
// jitter in [d/2, d], or the server's hint, never above the maximum backoff.
func (c *config) backoff(attempt int, hint time.Duration) time.Duration {
	if hint > 0 {
		return min(hint, c.backoffMax)
	}
	d := c.backoffInitial
	for range attempt {
		d *= 2
		if d >= c.backoffMax {
			d = c.backoffMax
			break
		}
	}
	return d/2 + rand.N(d/2+1)
}

// sleep waits for d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
