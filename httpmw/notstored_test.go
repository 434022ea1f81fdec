package httpmw_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
)

// TestUntypedJSONOnTheWire checks SPEC §4.2 for a body without a
// Content-Type, as a client receives it from a real server: net/http
// sniffs a type for such a body ("text/plain; charset=utf-8" for JSON), and
// the replay must carry the type the first answer had, with the same
// status and the same bytes. A body that is not JSON is not stored.
func TestUntypedJSONOnTheWire(t *testing.T) {
	t.Parallel()
	long := `{"items":[` + strings.Repeat(`{"id":"pay_1","amount":100},`, 40) + `{"id":"pay_2"}]}`
	tests := []struct {
		name       string
		handler    http.HandlerFunc
		wantStored bool
		wantType   []string // what net/http sends without the middleware
	}{
		{
			name:       "json after WriteHeader",
			handler:    answer(http.StatusCreated, nil, []byte(`{"id":"pay_1"}`)),
			wantStored: true, wantType: []string{"text/plain; charset=utf-8"},
		},
		{
			name:       "json without WriteHeader",
			handler:    answer(0, nil, []byte(`[1,2,3]`)),
			wantStored: true, wantType: []string{"text/plain; charset=utf-8"},
		},
		{
			name:       "json over 512 bytes after white space",
			handler:    answer(http.StatusOK, nil, []byte("\n\t "+long)),
			wantStored: true, wantType: []string{"text/plain; charset=utf-8"},
		},
		{
			name:       "json with identity encoding, which net/http does not sniff",
			handler:    answer(http.StatusCreated, map[string]string{"Content-Encoding": "identity"}, []byte(`{"id":1}`)),
			wantStored: true,
		},
		{
			name: "json with sniffing suppressed",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header()["Content-Type"] = nil
				answer(http.StatusCreated, nil, []byte(`{"id":1}`))(w, r)
			},
			wantStored: true,
		},
		{
			name:     "text",
			handler:  answer(http.StatusCreated, nil, []byte(`id=pay_1`)),
			wantType: []string{"text/plain; charset=utf-8"},
		},
		{
			name:     "html",
			handler:  answer(http.StatusOK, nil, []byte(`<!DOCTYPE html><p>ok</p>`)),
			wantType: []string{"text/html; charset=utf-8"},
		},
		{
			name:    "gzip",
			handler: answer(http.StatusCreated, map[string]string{"Content-Encoding": "gzip"}, gzipped(t, `{"id":1}`)),
		},
	}
	for _, proto := range []string{"HTTP/1.1", "HTTP/2"} {
		start := func(t *testing.T, h http.Handler) *httptest.Server {
			srv := httptest.NewUnstartedServer(h)
			if proto == "HTTP/2" {
				srv.EnableHTTP2 = true
				srv.StartTLS()
			} else {
				srv.Start()
			}
			t.Cleanup(srv.Close)
			return srv
		}
		for _, tt := range tests {
			t.Run(proto+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				bare, err := send(t.Context(), start(t, tt.handler), "-", `{"amount":1}`)
				require.NoError(t, err)
				require.Equal(t, tt.wantType, bare.header.Values("Content-Type"), "the handler without the middleware")

				var runs atomic.Int32
				spy := newSpy()
				srv := start(t, guarded(spy, counted(&runs, tt.handler)))
				first, err := send(t.Context(), srv, "untyped-key", `{"amount":1}`)
				require.NoError(t, err)
				assert.Equal(t, bare.status, first.status)
				assert.Equal(t, bare.header.Values("Content-Type"), first.header.Values("Content-Type"), "the first answer's type")
				assert.Equal(t, bare.header.Values("Content-Encoding"), first.header.Values("Content-Encoding"))
				assert.Equal(t, bare.body, first.body)

				retry, err := send(t.Context(), srv, "untyped-key", `{"amount":1}`)
				require.NoError(t, err)
				assert.Equal(t, first.status, retry.status)
				assert.Equal(t, first.header.Values("Content-Type"), retry.header.Values("Content-Type"), "the replay's type")
				assert.Equal(t, first.header.Values("Content-Encoding"), retry.header.Values("Content-Encoding"))
				assert.Equal(t, first.body, retry.body, "the replayed body")
				if tt.wantStored {
					assert.Equal(t, "true", retry.header.Get("Idempotent-Replayed"))
					assert.Equal(t, int32(1), runs.Load(), "the handler ran again")
					assert.Equal(t, int32(1), spy.completes.Load())
				} else {
					assert.Empty(t, retry.header.Get("Idempotent-Replayed"))
					assert.Equal(t, int32(2), runs.Load())
					assert.Zero(t, spy.completes.Load())
				}
			})
		}
	}
}

// TestNotStoredIsLogged checks SPEC §4.5: a guarded response that is not
// stored is logged at Warn, with the reason and a prefix of the storage
// key's hash, never the key; a stored one is not logged.
func TestNotStoredIsLogged(t *testing.T) {
	t.Parallel()
	const rawKey = "raw-key-6f1d2c9a"
	keyHash := idempotency.StorageKey("", "POST /payments", rawKey)[:12]
	tests := []struct {
		name    string
		handler http.HandlerFunc
		opts    []idempotency.Option
		// wantReason is part of the reason logged; "" means nothing is.
		wantReason string
	}{
		{name: "json is stored", handler: jsonHandler(http.StatusCreated, `{"id":1}`)},
		{name: "untyped json is stored", handler: answer(http.StatusCreated, nil, []byte(`{"id":1}`))},
		{
			name:       "html",
			handler:    answer(http.StatusOK, map[string]string{"Content-Type": "text/html; charset=utf-8"}, []byte("<p>ok</p>")),
			wantReason: "not-json",
		},
		{
			name:       "invalid json",
			handler:    answer(http.StatusCreated, map[string]string{"Content-Type": "application/json"}, []byte(`{"id":`)),
			wantReason: "invalid-json",
		},
		{
			name:       "untyped text",
			handler:    answer(http.StatusCreated, nil, []byte(`id=1`)),
			wantReason: "not-json",
		},
		{
			name:       "untyped gzip",
			handler:    answer(http.StatusCreated, map[string]string{"Content-Encoding": "gzip"}, gzipped(t, `{}`)),
			wantReason: "untyped-encoded",
		},
		{
			name:       "too large",
			handler:    jsonHandler(http.StatusCreated, `{"id":"pay_1"}`),
			opts:       []idempotency.Option{idempotency.WithMaxResponseSize(4)},
			wantReason: "too-large",
		},
		{
			name: "flushed",
			handler: func(w http.ResponseWriter, r *http.Request) {
				jsonHandler(http.StatusCreated, `{"id":1}`)(w, r)
				w.(http.Flusher).Flush()
			},
			wantReason: "streamed",
		},
		{
			name: "panic",
			handler: func(http.ResponseWriter, *http.Request) {
				panic(http.ErrAbortHandler)
			},
			wantReason: "panic",
		},
		{
			name: "switching protocols",
			handler: func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(http.StatusSwitchingProtocols)
			},
			wantReason: "not-final",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var logs syncBuffer
			h := guarded(newSpy(), tt.handler, append(tt.opts, idempotency.WithLogger(bufferLogger(&logs)))...)
			func() {
				defer func() { _ = recover() }()
				post(t, h, rawKey, `{}`)
			}()
			out := logs.String()
			assert.NotContains(t, out, rawKey)
			if tt.wantReason == "" {
				assert.Empty(t, out)
				return
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			require.Len(t, lines, 1, out)
			for _, want := range []string{
				"level=WARN", "reason=" + tt.wantReason, "route=POST ", "key_hash=" + keyHash,
			} {
				assert.Contains(t, lines[0], want)
			}
		})
	}
}

// TestRequestEndedIsLogged checks that a handler that gives up because its
// request ended is logged as not stored.
func TestRequestEndedIsLogged(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	ctx, cancel := context.WithCancel(t.Context())
	h := guarded(newSpy(), http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		// The request ends while the handler runs, as when its client goes
		// away, and the handler returns without an answer.
		cancel()
	}), idempotency.WithLogger(bufferLogger(&logs)))
	serve(h, request(ctx, http.MethodPost, "/payments", "ended-key", `{}`))
	assert.Contains(t, logs.String(), "reason=context-ended")
}
