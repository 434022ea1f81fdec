package httpmw_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/internal/otelcheck"
)

// rawKey is a client's key that must never appear in telemetry.
const rawKey = "raw-client-key-7f3a"

// counts returns the decisions counter of meters as "outcome route
// [reason]" to its value, and fails if any attribute holds the raw key.
func counts(t *testing.T, meters *otelcheck.Meters) map[string]int64 {
	t.Helper()
	meters.RequireNoKey(t, rawKey)
	return meters.Decisions(t)
}

// notHeldStore loses every claim before its response is stored.
type notHeldStore struct{ idempotency.Store }

func (notHeldStore) Complete(context.Context, string, string, []byte, time.Duration) error {
	return idempotency.ErrNotHeld
}

func TestMiddlewareCountsEachOutcomeOnce(t *testing.T) {
	t.Parallel()
	const pattern = "POST /payments/{id}"
	text := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok"))
	}
	tests := []struct {
		name    string
		store   func() idempotency.Store
		opts    []idempotency.Option
		handler http.HandlerFunc
		run     func(t *testing.T, h http.Handler)
		want    map[string]int64
	}{
		{
			name: "executed, replayed, mismatch",
			run: func(t *testing.T, h http.Handler) {
				require.Equal(t, http.StatusCreated, postTo(t, h, "/payments/p_1", rawKey, `{"a":1}`).Code)
				require.Equal(t, http.StatusCreated, postTo(t, h, "/payments/p_1", rawKey, `{"a":1}`).Code)
				require.Equal(t, http.StatusUnprocessableEntity, postTo(t, h, "/payments/p_1", rawKey, `{"a":2}`).Code)
			},
			want: map[string]int64{"executed " + pattern: 1, "replayed " + pattern: 1, "mismatch " + pattern: 1},
		},
		{
			name: "rejected before the engine",
			opts: []idempotency.Option{idempotency.WithRequireKey(true), idempotency.WithMaxBodySize(8)},
			run: func(t *testing.T, h http.Handler) {
				require.Equal(t, http.StatusUnprocessableEntity, postTo(t, h, "/payments/p_1", "a\x01b", `{}`).Code)
				require.Equal(t, http.StatusBadRequest, postTo(t, h, "/payments/p_1", "-", `{}`).Code)
				require.Equal(t, http.StatusRequestEntityTooLarge, postTo(t, h, "/payments/p_1", rawKey, `{"a":"long"}`).Code)
			},
			want: map[string]int64{"invalid-key " + pattern: 1, "key-required " + pattern: 1, "body-too-large " + pattern: 1},
		},
		{
			name:  "store unavailable",
			store: func() idempotency.Store { return &failingStore{} },
			run: func(t *testing.T, h http.Handler) {
				require.Equal(t, http.StatusServiceUnavailable, postTo(t, h, "/payments/p_1", rawKey, `{}`).Code)
			},
			want: map[string]int64{"store-unavailable " + pattern: 1},
		},
		{
			name:    "not stored, not JSON",
			handler: text,
			run: func(t *testing.T, h http.Handler) {
				require.Equal(t, http.StatusOK, postTo(t, h, "/payments/p_1", rawKey, `{}`).Code)
			},
			want: map[string]int64{"not-stored " + pattern + " not-json": 1},
		},
		{
			name: "not stored, too large",
			opts: []idempotency.Option{idempotency.WithMaxResponseSize(4)},
			run: func(t *testing.T, h http.Handler) {
				require.Equal(t, http.StatusCreated, postTo(t, h, "/payments/p_1", rawKey, `{}`).Code)
			},
			want: map[string]int64{"not-stored " + pattern + " too-large": 1},
		},
		{
			name: "not stored, streamed",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte(`{}`))
				assert.NoError(t, http.NewResponseController(w).Flush())
			},
			run: func(t *testing.T, h http.Handler) {
				require.Equal(t, http.StatusOK, postTo(t, h, "/payments/p_1", rawKey, `{}`).Code)
			},
			want: map[string]int64{"not-stored " + pattern + " streamed": 1},
		},
		{
			name:    "not stored, panic",
			handler: func(http.ResponseWriter, *http.Request) { panic("boom") },
			run: func(t *testing.T, h http.Handler) {
				assert.Panics(t, func() { postTo(t, h, "/payments/p_1", rawKey, `{}`) })
			},
			want: map[string]int64{"not-stored " + pattern + " panic": 1},
		},
		{
			name:  "lease lost",
			store: func() idempotency.Store { return notHeldStore{newSpy()} },
			run: func(t *testing.T, h http.Handler) {
				require.Equal(t, http.StatusCreated, postTo(t, h, "/payments/p_1", rawKey, `{}`).Code)
			},
			want: map[string]int64{"lease-lost " + pattern: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			meters := otelcheck.NewMeters(t)
			var store idempotency.Store = newSpy()
			if tt.store != nil {
				store = tt.store()
			}
			handler := tt.handler
			if handler == nil {
				handler = jsonHandler(http.StatusCreated, `{"id":"p_1"}`)
			}
			opts := append([]idempotency.Option{quietLogger(), meters.Option}, tt.opts...)
			mux := http.NewServeMux()
			mux.Handle(pattern, guarded(store, handler, opts...))

			tt.run(t, mux)

			assert.Equal(t, tt.want, counts(t, meters))
		})
	}
}

func TestMiddlewareRouteWithoutPatternIsTheMethod(t *testing.T) {
	t.Parallel()
	meters := otelcheck.NewMeters(t)
	h := guarded(newSpy(), jsonHandler(http.StatusCreated, `{}`), quietLogger(), meters.Option)
	require.Equal(t, http.StatusCreated, postTo(t, h, "/payments/p_123", rawKey, `{}`).Code)
	require.Equal(t, http.StatusCreated, postTo(t, h, "/payments/p_123", rawKey, `{}`).Code)
	assert.Equal(t, map[string]int64{"executed POST": 1, "replayed POST": 1}, counts(t, meters),
		"a path with IDs in it never becomes an attribute")
}

func TestMiddlewareCountsInFlight(t *testing.T) {
	t.Parallel()
	meters := otelcheck.NewMeters(t)
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	h := guarded(newSpy(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		once.Do(func() { close(entered) })
		<-release
		jsonHandler(http.StatusCreated, `{}`)(w, r)
	}), quietLogger(), meters.Option)

	first := make(chan int, 1)
	go func() { first <- postTo(t, h, "/payments", rawKey, `{}`).Code }()
	<-entered
	require.Equal(t, http.StatusConflict, postTo(t, h, "/payments", rawKey, `{}`).Code)
	close(release)
	require.Equal(t, http.StatusCreated, <-first)

	assert.Equal(t, map[string]int64{"in-flight POST": 1, "executed POST": 1}, counts(t, meters))
}

func TestMiddlewareReplayShowsOnTheServerSpan(t *testing.T) {
	t.Parallel()
	recorder := tracetest.NewSpanRecorder()
	provider := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(recorder))
	t.Cleanup(func() { _ = provider.Shutdown(context.Background()) })
	mux := http.NewServeMux()
	mux.Handle("POST /payments", guarded(newSpy(), jsonHandler(http.StatusCreated, `{}`), quietLogger(),
		idempotency.WithTracerProvider(provider)))
	// The server span, as otelhttp starts it outside the middleware.
	traced := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, span := provider.Tracer("test").Start(r.Context(), "POST /payments", trace.WithSpanKind(trace.SpanKindServer))
		defer span.End()
		mux.ServeHTTP(w, r.WithContext(ctx))
	})

	require.Equal(t, http.StatusCreated, postTo(t, traced, "/payments", rawKey, `{}`).Code)
	replay := postTo(t, traced, "/payments", rawKey, `{}`)
	require.Equal(t, "true", replay.Header().Get("Idempotent-Replayed"))

	var outcomes []string
	for _, s := range recorder.Ended() {
		for _, kv := range s.Attributes() {
			if kv.Key == "idempotency.outcome" {
				outcomes = append(outcomes, kv.Value.AsString())
			}
		}
		for _, ev := range s.Events() {
			for _, kv := range ev.Attributes {
				require.NotContains(t, kv.Value.String(), rawKey)
				if kv.Key == "idempotency.route" {
					assert.Equal(t, "POST /payments", kv.Value.AsString())
				}
			}
		}
	}
	assert.Equal(t, []string{"executed", "replayed"}, outcomes)
}

func postTo(t *testing.T, h http.Handler, target, key, body string) *httptest.ResponseRecorder {
	t.Helper()
	return serve(h, request(t.Context(), http.MethodPost, target, key, body))
}

func quietLogger() idempotency.Option {
	return idempotency.WithLogger(slog.New(slog.DiscardHandler))
}
