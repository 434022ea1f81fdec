package httpmw_test

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/store/memory"
)

func gzipped(t *testing.T, s string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, err := zw.Write([]byte(s))
	require.NoError(t, err)
	require.NoError(t, zw.Close())
	return buf.Bytes()
}

// answer returns a handler that sets the given headers, then writes status
// (unless zero) and body (unless nil).
func answer(status int, header map[string]string, body []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		for k, v := range header {
			w.Header().Set(k, v)
		}
		if status != 0 {
			w.WriteHeader(status)
		}
		if body != nil {
			_, _ = w.Write(body)
		}
	}
}

// TestWhatIsStored checks SPEC §4.2: JSON and bodiless responses are
// stored and replayed byte for byte; anything else reaches the client
// unchanged and a retry runs the handler again. The first response is
// always the one the handler would give without the middleware.
func TestWhatIsStored(t *testing.T) {
	t.Parallel()
	jsonCT := map[string]string{"Content-Type": "application/json"}
	gz := gzipped(t, `{"id":"pay_1","amount":100}`)
	tests := []struct {
		name    string
		handler http.HandlerFunc

		wantStored bool
		wantStatus int
	}{
		{name: "json", handler: answer(http.StatusCreated, jsonCT, []byte(`{"id":"pay_1"}`)), wantStored: true, wantStatus: 201},
		{
			name:       "json with charset",
			handler:    answer(http.StatusCreated, map[string]string{"Content-Type": "application/json; charset=utf-8"}, []byte(`{"name":"café"}`)),
			wantStored: true, wantStatus: 201,
		},
		{
			name:       "json in capitals",
			handler:    answer(http.StatusOK, map[string]string{"Content-Type": "Application/JSON"}, []byte(`[1, 2, 3]`)),
			wantStored: true, wantStatus: 200,
		},
		{
			name:       "problem+json",
			handler:    answer(http.StatusBadRequest, map[string]string{"Content-Type": "application/problem+json"}, []byte(`{"title":"bad"}`)),
			wantStored: true, wantStatus: 400,
		},
		{
			name:       "vendor +json",
			handler:    answer(http.StatusCreated, map[string]string{"Content-Type": "application/vnd.api+json"}, []byte(`{"data":null}`)),
			wantStored: true, wantStatus: 201,
		},
		{
			name:       "json with white space around",
			handler:    answer(http.StatusCreated, jsonCT, []byte(" \n{\"id\": 1}\n")),
			wantStored: true, wantStatus: 201,
		},
		{name: "server error json", handler: answer(http.StatusInternalServerError, jsonCT, []byte(`{"error":"x"}`)), wantStored: true, wantStatus: 500},
		{
			name:       "gzip-encoded json, stored unchecked",
			handler:    answer(http.StatusCreated, map[string]string{"Content-Type": "application/json", "Content-Encoding": "gzip"}, gz),
			wantStored: true, wantStatus: 201,
		},
		{name: "204", handler: answer(http.StatusNoContent, nil, nil), wantStored: true, wantStatus: 204},
		{name: "empty 201", handler: answer(http.StatusCreated, map[string]string{"Location": "/payments/1"}, nil), wantStored: true, wantStatus: 201},
		{name: "empty 202", handler: answer(http.StatusAccepted, nil, nil), wantStored: true, wantStatus: 202},
		{
			name: "302 redirect",
			handler: func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, "/payments/1", http.StatusFound)
			},
			wantStored: true, wantStatus: 302,
		},
		{
			name: "303 redirect",
			handler: func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, "/payments/1", http.StatusSeeOther)
			},
			wantStored: true, wantStatus: 303,
		},
		{name: "nothing written", handler: answer(0, nil, nil), wantStored: true, wantStatus: 200},
		{name: "body without WriteHeader", handler: answer(0, jsonCT, []byte(`{"ok":true}`)), wantStored: true, wantStatus: 200},
		{
			name: "header written twice keeps the first",
			handler: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusCreated)
				w.WriteHeader(http.StatusInternalServerError)
				_, _ = w.Write([]byte(`{"id":1}`))
			},
			wantStored: true, wantStatus: 201,
		},
		{
			name: "json written in pieces",
			handler: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusCreated)
				_, _ = io.WriteString(w, `{"id":`)
				_, _ = w.Write([]byte(`"pay_1"}`))
			},
			wantStored: true, wantStatus: 201,
		},
		{name: "html", handler: answer(http.StatusOK, map[string]string{"Content-Type": "text/html; charset=utf-8"}, []byte("<p>ok</p>")), wantStatus: 200},
		{name: "text", handler: answer(http.StatusCreated, map[string]string{"Content-Type": "text/plain"}, []byte("created")), wantStatus: 201},
		{name: "xml", handler: answer(http.StatusCreated, map[string]string{"Content-Type": "application/xml"}, []byte("<ok/>")), wantStatus: 201},
		{name: "invalid json", handler: answer(http.StatusCreated, jsonCT, []byte(`{"id":`)), wantStatus: 201},
		{name: "two json values", handler: answer(http.StatusCreated, jsonCT, []byte(`{"a":1}{"a":2}`)), wantStatus: 201},
		// net/http sniffs a type for a body without one, the recorder only
		// when WriteHeader was not called: TestUntypedJSONOnTheWire checks
		// what a client receives.
		{name: "json body without content type", handler: answer(0, nil, []byte(`{"id":1}`)), wantStored: true, wantStatus: 200},
		{name: "bare +json", handler: answer(http.StatusCreated, map[string]string{"Content-Type": "+json"}, []byte(`{}`)), wantStatus: 201},
		{
			name:       "gzip-encoded html",
			handler:    answer(http.StatusOK, map[string]string{"Content-Type": "text/html", "Content-Encoding": "gzip"}, gzipped(t, "<p>ok</p>")),
			wantStatus: 200,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			want := serve(tt.handler, request(t.Context(), http.MethodPost, "/payments", "-", `{"amount":1}`))
			require.Equal(t, tt.wantStatus, want.Code, "the handler without the middleware")

			var runs atomic.Int32
			h := guarded(newSpy(), counted(&runs, tt.handler))
			first := post(t, h, "stored-key", `{"amount":1}`)
			assert.Equal(t, want.Code, first.Code)
			assert.Equal(t, want.Header(), first.Header(), "the first response's headers")
			assert.Equal(t, want.Body.Bytes(), first.Body.Bytes(), "the first response's body")

			retry := post(t, h, "stored-key", `{"amount":1}`)
			if !tt.wantStored {
				assert.Equal(t, int32(2), runs.Load(), "the handler ran once only")
				assert.Empty(t, retry.Header().Get("Idempotent-Replayed"))
				assert.Equal(t, want.Body.Bytes(), retry.Body.Bytes())
				return
			}
			assert.Equal(t, int32(1), runs.Load(), "the handler ran again")
			assert.Equal(t, "true", retry.Header().Get("Idempotent-Replayed"))
			assert.Equal(t, want.Code, retry.Code)
			assert.Equal(t, want.Body.Bytes(), retry.Body.Bytes(), "the replayed body")
			for _, name := range []string{"Content-Type", "Content-Encoding", "Location"} {
				assert.Equal(t, want.Header().Values(name), retry.Header().Values(name), name)
			}
		})
	}
}

// TestContentEncodingKept checks that an encoded body is replayed with its
// Content-Encoding even when the allowlist leaves it out: the bytes mean
// nothing without it.
func TestContentEncodingKept(t *testing.T) {
	t.Parallel()
	gz := gzipped(t, `{"id":"pay_1"}`)
	var runs atomic.Int32
	h := guarded(newSpy(), counted(&runs, answer(http.StatusCreated,
		map[string]string{"Content-Type": "application/json", "Content-Encoding": "gzip"}, gz)),
		idempotency.WithStoredHeaders("Content-Type"))
	require.Equal(t, http.StatusCreated, post(t, h, "encoded-key", `{}`).Code)
	retry := post(t, h, "encoded-key", `{}`)
	assert.Equal(t, "true", retry.Header().Get("Idempotent-Replayed"))
	assert.Equal(t, "gzip", retry.Header().Get("Content-Encoding"))
	assert.Equal(t, gz, retry.Body.Bytes())
	assert.Equal(t, int32(1), runs.Load())
}

// TestStoredHeaders checks the allowlist: only listed headers are
// replayed, and credentials never, even when listed.
func TestStoredHeaders(t *testing.T) {
	t.Parallel()
	handler := func(w http.ResponseWriter, _ *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Location", "/payments/1")
		h.Set("X-Request-Id", "req-1")
		h.Set("Set-Cookie", "session=secret")
		h.Set("Authorization", "Bearer secret")
		h.Set("Connection", "keep-alive")
		h.Set("Content-Length", "8")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"id":1}`))
	}
	tests := []struct {
		name       string
		opts       []idempotency.Option
		wantHeader http.Header
	}{
		{
			name: "default allowlist",
			wantHeader: http.Header{
				"Content-Type": {"application/json"}, "Location": {"/payments/1"}, "Idempotent-Replayed": {"true"},
			},
		},
		{
			name: "credentials listed",
			opts: []idempotency.Option{idempotency.WithStoredHeaders(
				"content-type", "X-Request-Id", "Set-Cookie", "Authorization", "Connection", "Content-Length")},
			wantHeader: http.Header{
				"Content-Type": {"application/json"}, "X-Request-Id": {"req-1"}, "Idempotent-Replayed": {"true"},
			},
		},
		{
			name: "custom replay header",
			opts: []idempotency.Option{idempotency.WithReplayHeader("X-Replayed")},
			wantHeader: http.Header{
				"Content-Type": {"application/json"}, "Location": {"/payments/1"}, "X-Replayed": {"true"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := guarded(newSpy(), http.HandlerFunc(handler), tt.opts...)
			first := post(t, h, "header-key", `{}`)
			require.Equal(t, http.StatusCreated, first.Code)
			assert.Equal(t, "session=secret", first.Header().Get("Set-Cookie"), "the first client gets every header")

			retry := post(t, h, "header-key", `{}`)
			assert.Equal(t, http.StatusCreated, retry.Code)
			assert.Equal(t, tt.wantHeader, retry.Header())
			assert.Equal(t, `{"id":1}`, retry.Body.String())
		})
	}
}

// TestReplayDropsCredentials replays a record that holds credentials, as
// another version might have stored it: they never reach the client.
func TestReplayDropsCredentials(t *testing.T) {
	t.Parallel()
	record := `{"v":1,"s":200,"h":{"Set-Cookie":["session=secret"],"authorization":["Bearer x"],` +
		`"Content-Type":["application/json"],"Content-Length":["99"]},"b":"e30="}`
	store := &fixedStore{result: idempotency.ClaimResult{State: idempotency.StateCompleted, Record: []byte(record)}}
	var runs atomic.Int32
	h := guarded(store, counted(&runs, jsonHandler(http.StatusCreated, `{}`)))

	rec := post(t, h, "credential-key", `{}`)
	assert.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, http.Header{"Content-Type": {"application/json"}, "Idempotent-Replayed": {"true"}}, rec.Header())
	assert.Equal(t, "{}", rec.Body.String())
	assert.Zero(t, runs.Load())
}

// TestFlushIsNotStored checks that a handler that flushes streams its
// response, which is then not stored.
func TestFlushIsNotStored(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		flush func(http.ResponseWriter) error
	}{
		{name: "http.Flusher", flush: func(w http.ResponseWriter) error { w.(http.Flusher).Flush(); return nil }},
		{name: "ResponseController", flush: func(w http.ResponseWriter) error { return http.NewResponseController(w).Flush() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			spy := newSpy()
			var runs atomic.Int32
			h := guarded(spy, counted(&runs, func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusCreated)
				_, _ = io.WriteString(w, `{"progress":`)
				assert.NoError(t, tt.flush(w))
				_, _ = io.WriteString(w, `100}`)
			}))
			first := post(t, h, "flush-key", `{}`)
			assert.True(t, first.Flushed)
			assert.Equal(t, http.StatusCreated, first.Code)
			assert.Equal(t, `{"progress":100}`, first.Body.String())

			retry := post(t, h, "flush-key", `{}`)
			assert.Empty(t, retry.Header().Get("Idempotent-Replayed"))
			assert.Equal(t, int32(2), runs.Load())
			assert.Zero(t, spy.completes.Load())
			assert.Equal(t, int32(2), spy.releases.Load())
		})
	}
}

// TestResponseSizeLimit checks that a response up to the limit is stored,
// and a larger one reaches its client whole but is not stored.
func TestResponseSizeLimit(t *testing.T) {
	t.Parallel()
	const limit = 64
	tests := []struct {
		name       string
		size       int
		wantStored bool
	}{
		{name: "at the limit", size: limit, wantStored: true},
		{name: "one byte over", size: limit + 1},
		{name: "far over", size: 10 * limit},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			body := `"` + strings.Repeat("x", tt.size-2) + `"`
			var runs atomic.Int32
			h := guarded(newSpy(), counted(&runs, func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusCreated)
				// Written in pieces, so that the limit is crossed mid-way.
				for rest := body; rest != ""; {
					n := min(len(rest), 7)
					_, err := io.WriteString(w, rest[:n])
					assert.NoError(t, err)
					rest = rest[n:]
				}
			}), idempotency.WithMaxResponseSize(limit))

			first := post(t, h, "size-key", `{}`)
			assert.Equal(t, http.StatusCreated, first.Code)
			assert.Equal(t, body, first.Body.String())

			retry := post(t, h, "size-key", `{}`)
			assert.Equal(t, body, retry.Body.String())
			if tt.wantStored {
				assert.Equal(t, int32(1), runs.Load())
				assert.Equal(t, "true", retry.Header().Get("Idempotent-Replayed"))
			} else {
				assert.Equal(t, int32(2), runs.Load())
				assert.Empty(t, retry.Header().Get("Idempotent-Replayed"))
			}
		})
	}
}

// TestStorePolicy checks that the store policy option reaches the
// middleware: a response it rejects is released, and runs again.
func TestStorePolicy(t *testing.T) {
	t.Parallel()
	var runs atomic.Int32
	h := guarded(memory.New(), counted(&runs, jsonHandler(http.StatusServiceUnavailable, `{"error":"busy"}`)),
		idempotency.WithStorePolicy(idempotency.StoreUnlessServerError))
	for range 2 {
		rec := post(t, h, "policy-key", `{}`)
		assert.Equal(t, http.StatusServiceUnavailable, rec.Code)
		assert.Empty(t, rec.Header().Get("Idempotent-Replayed"))
	}
	assert.Equal(t, int32(2), runs.Load())
}

// TestWriteNotAllowed checks that, as with net/http, a body cannot be
// written with a 204 or a 304.
func TestWriteNotAllowed(t *testing.T) {
	t.Parallel()
	for _, status := range []int{http.StatusNoContent, http.StatusNotModified} {
		h := guarded(newSpy(), http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(status)
			_, err := w.Write([]byte(`{}`))
			assert.ErrorIs(t, err, http.ErrBodyNotAllowed)
		}))
		rec := post(t, h, "no-body-key", `{}`)
		assert.Equal(t, status, rec.Code)
		assert.Empty(t, rec.Body.String())
	}
}
