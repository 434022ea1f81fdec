package idempotency_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/idemkey/idempotency"
)

func TestRetryHint(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, status, retryAfter string
		wantHint                 time.Duration
		wantRetry                bool
	}{
		{"in flight with a hint", idempotency.StatusInFlight, "2", 2 * time.Second, true},
		{"store unavailable without a hint", idempotency.StatusStoreUnavailable, "", 0, true},
		{"a hint that is not a number", idempotency.StatusInFlight, "soon", 0, true},
		{"a negative hint", idempotency.StatusInFlight, "-1", 0, true},
		{"mismatch", idempotency.StatusMismatch, "1", 0, false},
		{"invalid key", idempotency.StatusInvalidKey, "", 0, false},
		{"the handler's own answer", "", "1", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			hint, retry := idempotency.RetryHint(tt.status, tt.retryAfter)
			assert.Equal(t, tt.wantHint, hint)
			assert.Equal(t, tt.wantRetry, retry)
		})
	}
}

func TestRetryPolicy(t *testing.T) {
	t.Parallel()
	p := idempotency.NewRetryPolicy(idempotency.WithMaxRetries(5), idempotency.WithIdempotencyHeader("X-Key"),
		idempotency.WithBackoff(time.Millisecond, 2*time.Millisecond))
	assert.Equal(t, 5, p.MaxRetries())
	assert.Equal(t, "X-Key", p.KeyHeader())
	assert.True(t, p.Guards("/a.B/C", false))
	assert.False(t, p.Guards("/a.B/C", true), "a safe procedure")

	filtered := idempotency.NewRetryPolicy(idempotency.WithProcedureFilter(func(p string) bool { return p == "/a.B/Safe" }))
	assert.True(t, filtered.Guards("/a.B/Safe", true), "the filter decides")
	assert.False(t, filtered.Guards("/a.B/C", false), "the filter decides")

	start := time.Now()
	assert.True(t, p.Wait(t.Context(), 0, time.Hour), "a hint is capped by the maximum backoff")
	assert.Less(t, time.Since(start), time.Minute)

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	slow := idempotency.NewRetryPolicy(idempotency.WithBackoff(time.Hour, time.Hour))
	assert.False(t, slow.Wait(ctx, 0, 0), "the context ended first")
	assert.Equal(t, idempotency.DefaultMaxRetries, idempotency.NewRetryPolicy().MaxRetries())
}
