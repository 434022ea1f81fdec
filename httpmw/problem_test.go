package httpmw_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
)

// TestProblems walks every error of SPEC §7 through the middleware: the
// answer is a problem document with the right status, type and
// Idempotency-Status, and the handler does not run.
func TestProblems(t *testing.T) {
	t.Parallel()
	const v1UUID = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
	tests := []struct {
		name    string
		store   idempotency.Store // a new spy store when nil
		opts    []idempotency.Option
		prior   string   // body of an earlier request with the same key, if any
		key     string   // "-" for none
		keys    []string // several header values, instead of key
		body    string
		chunked bool // the body's length is not declared

		wantStatus     int
		wantLabel      string
		wantType       string
		wantDetail     string
		wantRetryAfter string
		wantUntouched  bool // the store saw no call at all
	}{
		{
			name: "key required", opts: []idempotency.Option{idempotency.WithRequireKey(true)}, key: "-",
			wantStatus: http.StatusBadRequest, wantLabel: idempotency.StatusInvalidKey, wantType: "key-required",
			wantDetail: "Idempotency-Key header", wantUntouched: true,
		},
		{
			name: "key required, blank key", opts: []idempotency.Option{idempotency.WithRequireKey(true)}, key: " \t ",
			wantStatus: http.StatusBadRequest, wantLabel: idempotency.StatusInvalidKey, wantType: "key-required",
			wantDetail: "Idempotency-Key header", wantUntouched: true,
		},
		{
			name: "key required names the configured header", key: "-",
			opts:       []idempotency.Option{idempotency.WithRequireKey(true), idempotency.WithIdempotencyHeader("x-request-key")},
			wantStatus: http.StatusBadRequest, wantLabel: idempotency.StatusInvalidKey, wantType: "key-required",
			wantDetail: "X-Request-Key header", wantUntouched: true,
		},
		{
			name: "empty quoted key", key: `""`,
			wantStatus: http.StatusUnprocessableEntity, wantLabel: idempotency.StatusInvalidKey, wantType: "invalid-key",
			wantDetail: "empty", wantUntouched: true,
		},
		{
			name: "256-byte key", key: strings.Repeat("k", 256),
			wantStatus: http.StatusUnprocessableEntity, wantLabel: idempotency.StatusInvalidKey, wantType: "invalid-key",
			wantDetail: "longer than 255 bytes", wantUntouched: true,
		},
		{
			name: "control character", key: "key-\x01-with-control",
			wantStatus: http.StatusUnprocessableEntity, wantLabel: idempotency.StatusInvalidKey, wantType: "invalid-key",
			wantDetail: "control character", wantUntouched: true,
		},
		{
			name: "invalid UTF-8", key: "key-\xff\xfe-invalid",
			wantStatus: http.StatusUnprocessableEntity, wantLabel: idempotency.StatusInvalidKey, wantType: "invalid-key",
			wantDetail: "UTF-8", wantUntouched: true,
		},
		{
			name: "two header values", keys: []string{"first-key-value", "second-key-value"},
			wantStatus: http.StatusUnprocessableEntity, wantLabel: idempotency.StatusInvalidKey, wantType: "invalid-key",
			wantDetail: "more than once", wantUntouched: true,
		},
		{
			name: "v1 UUID under WithEnforceUUID4", key: v1UUID,
			opts:       []idempotency.Option{idempotency.WithEnforceUUID4(true)},
			wantStatus: http.StatusUnprocessableEntity, wantLabel: idempotency.StatusInvalidKey, wantType: "invalid-key",
			wantDetail: "version 4 UUID is expected", wantUntouched: true,
		},
		{
			name: "not a UUID under WithEnforceUUID4", key: "order-2024-0001",
			opts:       []idempotency.Option{idempotency.WithEnforceUUID4(true)},
			wantStatus: http.StatusUnprocessableEntity, wantLabel: idempotency.StatusInvalidKey, wantType: "invalid-key",
			wantDetail: "version 4 UUID is expected", wantUntouched: true,
		},
		{
			name: "body over the limit", key: "body-key", body: `{"amount":10}`,
			opts:       []idempotency.Option{idempotency.WithMaxBodySize(12)},
			wantStatus: http.StatusRequestEntityTooLarge, wantLabel: idempotency.StatusBodyTooLarge,
			wantType: "body-too-large", wantDetail: "12 bytes", wantUntouched: true,
		},
		{
			name: "undeclared body over the limit", key: "body-key", body: `{"amount":10}`, chunked: true,
			opts:       []idempotency.Option{idempotency.WithMaxBodySize(12)},
			wantStatus: http.StatusRequestEntityTooLarge, wantLabel: idempotency.StatusBodyTooLarge,
			wantType: "body-too-large", wantDetail: "12 bytes", wantUntouched: true,
		},
		{
			name: "payload mismatch", key: "mismatch-key", prior: `{"amount":1}`, body: `{"amount":2}`,
			wantStatus: http.StatusUnprocessableEntity, wantLabel: idempotency.StatusMismatch, wantType: "mismatch",
			wantDetail: "different request",
		},
		{
			name: "in flight", key: "in-flight-key",
			store:      &fixedStore{result: idempotency.ClaimResult{State: idempotency.StateInFlight, LeaseLeft: 9 * time.Second}},
			wantStatus: http.StatusConflict, wantLabel: idempotency.StatusInFlight, wantType: "in-flight",
			wantDetail: "Retry-After", wantRetryAfter: "1",
		},
		{
			name: "in flight, Retry-After rounded up", key: "in-flight-key",
			store:      &fixedStore{result: idempotency.ClaimResult{State: idempotency.StateInFlight}},
			opts:       []idempotency.Option{idempotency.WithRetryAfter(2500 * time.Millisecond)},
			wantStatus: http.StatusConflict, wantLabel: idempotency.StatusInFlight, wantType: "in-flight",
			wantDetail: "Retry-After", wantRetryAfter: "3",
		},
		{
			name: "store unavailable", key: "store-key", store: &failingStore{},
			wantStatus: http.StatusServiceUnavailable, wantLabel: idempotency.StatusStoreUnavailable,
			wantType: "store-unavailable", wantDetail: "cannot be reached",
		},
		{
			name: "half-written record", key: "store-key",
			store: &fixedStore{result: idempotency.ClaimResult{
				State: idempotency.StateCompleted, Record: []byte(`{"v":1,"s":201,"h":{"Content-Type":["appl`),
			}},
			wantStatus: http.StatusServiceUnavailable, wantLabel: idempotency.StatusStoreUnavailable,
			wantType: "store-unavailable", wantDetail: "cannot be reached",
		},
		{
			name: "record of an unknown version", key: "store-key",
			store: &fixedStore{result: idempotency.ClaimResult{
				State: idempotency.StateCompleted, Record: []byte(`{"v":99,"s":201}`),
			}},
			wantStatus: http.StatusServiceUnavailable, wantLabel: idempotency.StatusStoreUnavailable,
			wantType: "store-unavailable", wantDetail: "cannot be reached",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			store := tt.store
			if store == nil {
				store = newSpy()
			}
			var runs atomic.Int32
			opts := append([]idempotency.Option{idempotency.WithLogger(bufferLogger(&syncBuffer{}))}, tt.opts...)
			h := guarded(store, counted(&runs, jsonHandler(http.StatusCreated, `{"id":"pay_1"}`)), opts...)
			if tt.prior != "" {
				first := post(t, h, tt.key, tt.prior)
				require.Equal(t, http.StatusCreated, first.Code)
			}
			before := runs.Load()

			r := request(t.Context(), http.MethodPost, "/payments", tt.key, tt.body)
			if tt.keys != nil {
				r.Header["Idempotency-Key"] = tt.keys
			}
			if tt.chunked {
				r.ContentLength = -1
			}
			rec := serve(h, r)

			raw := rec.Body.String()
			doc := requireProblem(t, rec, tt.wantStatus, tt.wantLabel, tt.wantType)
			assert.Contains(t, doc.Detail, tt.wantDetail)
			assert.Equal(t, tt.wantRetryAfter, rec.Header().Get("Retry-After"))
			assert.Equal(t, before, runs.Load(), "the handler ran")
			if len(tt.key) >= 8 {
				assert.NotContains(t, raw, tt.key, "the problem shows the raw key")
			}
			if tt.wantUntouched {
				assert.Zero(t, store.(*spyStore).calls(), "the store was called")
			}
		})
	}
}

// TestInFlightDuplicates sends 24 duplicates at once while the first one
// is held in its handler: the handler runs once, every other duplicate is
// told to retry, and a retry afterwards gets the first response.
func TestInFlightDuplicates(t *testing.T) {
	t.Parallel()
	const n = 24
	var runs atomic.Int32
	proceed := make(chan struct{})
	h := guarded(newSpy(), counted(&runs, func(w http.ResponseWriter, r *http.Request) {
		<-proceed
		jsonHandler(http.StatusCreated, `{"id":"pay_1"}`)(w, r)
	}))

	start := make(chan struct{})
	results := make(chan *httptest.ResponseRecorder, n)
	for range n {
		go func() {
			<-start
			results <- post(t, h, "duplicate-key", `{"amount":1}`)
		}()
	}
	close(start)

	// The executing request is held in its handler, so the other n-1
	// answer first, and all of them with a conflict.
	for i := range n - 1 {
		select {
		case res := <-results:
			requireProblem(t, res, http.StatusConflict, idempotency.StatusInFlight, "in-flight")
			assert.Equal(t, "1", res.Header().Get("Retry-After"), "duplicate %d", i)
		case <-time.After(10 * time.Second):
			require.FailNow(t, "the duplicates did not answer while the first was in flight")
		}
	}
	close(proceed)
	first := <-results
	assert.Equal(t, http.StatusCreated, first.Code)
	assert.Equal(t, `{"id":"pay_1"}`, first.Body.String())
	assert.Empty(t, first.Header().Get("Idempotent-Replayed"))

	retry := post(t, h, "duplicate-key", `{"amount":1}`)
	assert.Equal(t, http.StatusCreated, retry.Code)
	assert.Equal(t, "true", retry.Header().Get("Idempotent-Replayed"))
	assert.Equal(t, `{"id":"pay_1"}`, retry.Body.String())
	assert.Equal(t, int32(1), runs.Load())
}
