package httpmw_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/httpmw"
	"github.com/idemkey/idempotency/store/memory"
)

// TestReplaysShareNoHeaderValues checks SPEC §5.1: an in-place edit of a
// replayed header's value, as an outer handler may make, never reaches the
// next replay.
func TestReplaysShareNoHeaderValues(t *testing.T) {
	t.Parallel()
	h := httpmw.New(memory.New())(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Language", "en")
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	send := func() *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader(`{}`))
		r.Header.Set(idempotency.DefaultIdempotencyHeader, "k")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	send()
	replay := send()
	require.Equal(t, "true", replay.Header().Get(idempotency.DefaultReplayHeader))
	for _, vs := range replay.Header() {
		vs[0] = "edited"
	}
	again := send()
	assert.Equal(t, "en", again.Header().Get("Content-Language"))
	assert.Equal(t, "application/json", again.Header().Get("Content-Type"))
	assert.Equal(t, "true", again.Header().Get(idempotency.DefaultReplayHeader))
}

// claimBlocker's Claim waits for its context to end and returns its error,
// as a networked store does when the request is cancelled.
type claimBlocker struct {
	idempotency.Store
	entered chan struct{}
}

func (s *claimBlocker) Claim(ctx context.Context, _, _ string, _ time.Duration) (idempotency.ClaimResult, error) {
	close(s.entered)
	<-ctx.Done()
	return idempotency.ClaimResult{}, ctx.Err()
}

// TestCancelledClaimDoesNotRun checks SPEC §6.1 for httpmw: a request whose
// context ends while claiming is answered with its context's error, and
// even under fail-open the handler does not run.
func TestCancelledClaimDoesNotRun(t *testing.T) {
	t.Parallel()
	store := &claimBlocker{Store: memory.New(), entered: make(chan struct{})}
	var runs atomic.Int32
	h := httpmw.New(store, idempotency.WithFailOpen(true))(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		runs.Add(1)
	}))
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		<-store.entered
		cancel()
	}()
	r := httptest.NewRequestWithContext(ctx, http.MethodPost, "/orders", strings.NewReader(`{}`))
	r.Header.Set(idempotency.DefaultIdempotencyHeader, "k")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	assert.Equal(t, 499, w.Code)
	assert.Zero(t, runs.Load(), "the handler ran")
}
