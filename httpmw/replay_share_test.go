package httpmw_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

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
