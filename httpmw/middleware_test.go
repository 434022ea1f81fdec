package httpmw_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/httpmw"
	"github.com/idemkey/idempotency/store/memory"
)

func TestFirstAndReplay(t *testing.T) {
	t.Parallel()
	var runs atomic.Int32
	h := guarded(memory.New(), counted(&runs, jsonHandler(http.StatusCreated, `{"id":"pay_1"}`)))

	first := post(t, h, "replay-key", `{"amount":1}`)
	require.Equal(t, http.StatusCreated, first.Code)
	assert.Empty(t, first.Header().Values("Idempotent-Replayed"))

	for range 3 {
		retry := post(t, h, "replay-key", `{"amount":1}`)
		assert.Equal(t, http.StatusCreated, retry.Code)
		assert.Equal(t, first.Body.Bytes(), retry.Body.Bytes())
		assert.Equal(t, http.Header{"Content-Type": {"application/json"}, "Idempotent-Replayed": {"true"}}, retry.Header())
	}
	assert.Equal(t, int32(1), runs.Load())
}

func TestNewPanics(t *testing.T) {
	t.Parallel()
	assert.PanicsWithValue(t, "idempotency: NewEngine: store must not be nil", func() { httpmw.New(nil) })
	assert.PanicsWithValue(t, "httpmw: New: the handler must not be nil", func() { httpmw.New(memory.New())(nil) })
	assert.Panics(t, func() { httpmw.New(memory.New(), idempotency.WithMaxBodySize(0)) })
}

// TestPassThrough checks SPEC §1.1: a request that is not guarded reaches
// the handler untouched and the store is never called.
func TestPassThrough(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		method string
		key    string
		opts   []idempotency.Option
	}{
		{name: "GET", method: http.MethodGet, key: "pass-key"},
		{name: "HEAD", method: http.MethodHead, key: "pass-key"},
		{name: "PUT", method: http.MethodPut, key: "pass-key"},
		{name: "DELETE", method: http.MethodDelete, key: "pass-key"},
		{name: "POST without key", method: http.MethodPost, key: "-"},
		{name: "POST with empty key", method: http.MethodPost, key: ""},
		{name: "POST with blank key", method: http.MethodPost, key: " \t "},
		{
			name: "POST when only PUT applies", method: http.MethodPost, key: "pass-key",
			opts: []idempotency.Option{idempotency.WithApplicableMethods("put")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			spy := newSpy()
			var runs atomic.Int32
			var gotBody []string
			h := guarded(spy, counted(&runs, func(w http.ResponseWriter, r *http.Request) {
				b, err := io.ReadAll(r.Body)
				assert.NoError(t, err)
				gotBody = append(gotBody, string(b))
				jsonHandler(http.StatusCreated, `{}`)(w, r)
			}), tt.opts...)
			for range 2 {
				rec := serve(h, request(t.Context(), tt.method, "/payments", tt.key, `{"amount":1}`))
				assert.Equal(t, http.StatusCreated, rec.Code)
				assert.Empty(t, rec.Header().Values("Idempotent-Replayed"))
			}
			assert.Equal(t, int32(2), runs.Load())
			assert.Equal(t, []string{`{"amount":1}`, `{"amount":1}`}, gotBody)
			assert.Zero(t, spy.calls())
		})
	}
}

// TestRequestBody checks SPEC §4.7: the handler reads the body byte for
// byte as the client sent it, up to and including the limit.
func TestRequestBody(t *testing.T) {
	t.Parallel()
	const limit = 4096
	binary := make([]byte, 256)
	for i := range binary {
		binary[i] = byte(i)
	}
	bodies := []struct {
		name     string
		body     []byte
		declared bool
	}{
		{name: "empty", body: nil, declared: true},
		{name: "json", body: []byte(`{"amount":100,"currency":"EUR"}`), declared: true},
		{name: "binary", body: binary, declared: true},
		{name: "at the limit", body: bytes.Repeat([]byte("a"), limit), declared: true},
		{name: "undeclared, at the limit", body: bytes.Repeat([]byte("b"), limit)},
		{name: "undeclared, small", body: []byte(`{"a":1}`)},
	}
	readers := []struct {
		name string
		read func(io.Reader) ([]byte, error)
	}{
		{name: "ReadAll", read: io.ReadAll},
		{name: "one byte at a time", read: func(r io.Reader) ([]byte, error) { return io.ReadAll(iotest.OneByteReader(r)) }},
		{name: "io.Copy", read: func(r io.Reader) ([]byte, error) {
			var buf bytes.Buffer
			_, err := io.Copy(&buf, r)
			return buf.Bytes(), err
		}},
	}
	for _, b := range bodies {
		for _, rd := range readers {
			t.Run(b.name+"/"+rd.name, func(t *testing.T) {
				t.Parallel()
				var got []byte
				h := guarded(memory.New(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					var err error
					got, err = rd.read(r.Body)
					assert.NoError(t, err)
					assert.NoError(t, r.Body.Close())
					w.WriteHeader(http.StatusNoContent)
				}), idempotency.WithMaxBodySize(limit))
				r := request(t.Context(), http.MethodPost, "/upload", "body-key", "")
				// Hide the reader's type, so that nothing but the middleware
				// can know the length.
				r.Body = io.NopCloser(iotest.HalfReader(bytes.NewReader(b.body)))
				r.ContentLength = -1
				if b.declared {
					r.ContentLength = int64(len(b.body))
				}
				rec := serve(h, r)
				require.Equal(t, http.StatusNoContent, rec.Code, rec.Body.String())
				assert.Len(t, got, len(b.body))
				assert.True(t, bytes.Equal(b.body, got), "the handler read other bytes")
			})
		}
	}
}

// TestDeclaredBodyOverLimit checks that a body declared larger than the
// limit is refused before any of it is read.
func TestDeclaredBodyOverLimit(t *testing.T) {
	t.Parallel()
	spy := newSpy()
	h := guarded(spy, jsonHandler(http.StatusCreated, `{}`), idempotency.WithMaxBodySize(8))
	r := request(t.Context(), http.MethodPost, "/payments", "declared-key", "")
	var read atomic.Bool
	r.Body = io.NopCloser(readFunc(func(p []byte) (int, error) {
		read.Store(true)
		return 0, io.EOF
	}))
	r.ContentLength = 9
	rec := serve(h, r)
	requireProblem(t, rec, http.StatusRequestEntityTooLarge, idempotency.StatusBodyTooLarge, "body-too-large")
	assert.False(t, read.Load(), "the body was read")
	assert.Zero(t, spy.calls())
}

type readFunc func([]byte) (int, error)

func (f readFunc) Read(p []byte) (int, error) { return f(p) }

// TestBodyReadError checks that a body that fails mid-way is answered 400
// and never reaches the store.
func TestBodyReadError(t *testing.T) {
	t.Parallel()
	spy := newSpy()
	var runs atomic.Int32
	h := guarded(spy, counted(&runs, jsonHandler(http.StatusCreated, `{}`)))
	r := request(t.Context(), http.MethodPost, "/payments", "read-error-key", "")
	r.Body = io.NopCloser(io.MultiReader(strings.NewReader(`{"amo`), iotest.ErrReader(io.ErrUnexpectedEOF)))
	rec := serve(h, r)
	assert.Equal(t, http.StatusBadRequest, rec.Code)
	assert.Equal(t, "application/problem+json", rec.Header().Get("Content-Type"))
	assert.Contains(t, rec.Body.String(), `"type":"https://github.com/idemkey/idempotency#body-unreadable"`)
	assert.Zero(t, runs.Load())
	assert.Zero(t, spy.calls())
}

// TestMaxBytesReaderOutside checks that a limit an outer handler set with
// http.MaxBytesReader is answered 413 too.
func TestMaxBytesReaderOutside(t *testing.T) {
	t.Parallel()
	h := guarded(newSpy(), jsonHandler(http.StatusCreated, `{}`))
	outer := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, 4)
		h.ServeHTTP(w, r)
	})
	r := request(t.Context(), http.MethodPost, "/payments", "outer-limit-key", `{"amount":1}`)
	r.ContentLength = -1
	rec := serve(outer, r)
	requireProblem(t, rec, http.StatusRequestEntityTooLarge, idempotency.StatusBodyTooLarge, "body-too-large")
}

// TestPanicReleasesClaim is the seed's "key locked forever after the
// handler raised": the panic goes on, and a retry runs the handler again.
func TestPanicReleasesClaim(t *testing.T) {
	t.Parallel()
	for _, value := range []any{"boom", http.ErrAbortHandler} {
		spy := newSpy()
		var runs atomic.Int32
		h := guarded(spy, counted(&runs, func(w http.ResponseWriter, r *http.Request) {
			if runs.Load() == 1 {
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte(`{"half":`))
				panic(value)
			}
			jsonHandler(http.StatusCreated, `{"id":"pay_1"}`)(w, r)
		}))
		assert.PanicsWithValue(t, value, func() { post(t, h, "panic-key", `{}`) })
		assert.Equal(t, int32(1), spy.releases.Load())

		retry := post(t, h, "panic-key", `{}`)
		assert.Equal(t, http.StatusCreated, retry.Code)
		assert.Empty(t, retry.Header().Get("Idempotent-Replayed"))
		assert.Equal(t, `{"id":"pay_1"}`, retry.Body.String())
		again := post(t, h, "panic-key", `{}`)
		assert.Equal(t, "true", again.Header().Get("Idempotent-Replayed"))
		assert.Equal(t, int32(2), runs.Load())
	}
}

// TestExpiredRecordRunsAnew is the seed's "in-flight marker never cleared
// after a success": once the record expires, the key runs again, and is
// not stuck in flight.
func TestExpiredRecordRunsAnew(t *testing.T) {
	t.Parallel()
	const expiry = 200 * time.Millisecond
	spy := newSpy()
	var runs atomic.Int32
	h := guarded(spy, counted(&runs, jsonHandler(http.StatusCreated, `{"id":"pay_1"}`)),
		idempotency.WithExpiry(expiry))

	// replays checks a retry sent right after a run; on a machine so slow
	// that the record has expired already, that retry proves nothing.
	replays := func(ran time.Time) {
		rec := post(t, h, "expiry-key", `{}`)
		if time.Since(ran) < expiry {
			assert.Equal(t, "true", rec.Header().Get("Idempotent-Replayed"))
		}
	}
	ran := time.Now()
	require.Equal(t, http.StatusCreated, post(t, h, "expiry-key", `{}`).Code)
	require.Equal(t, int32(1), spy.completes.Load(), "the response was not stored")
	replays(ran)

	// Waiting out the expiry is the behaviour under test, with a wide
	// margin over the store's clock.
	time.Sleep(2 * expiry)
	ran = time.Now()
	rec := post(t, h, "expiry-key", `{}`)
	assert.Equal(t, http.StatusCreated, rec.Code)
	assert.Empty(t, rec.Header().Get("Idempotent-Replayed"))
	assert.Equal(t, int32(2), runs.Load())
	assert.Equal(t, int32(2), spy.completes.Load(), "the new response was not stored")
	replays(ran)
}

// TestKeysDoNotCollide is the seed's "keys of different endpoints or users
// colliding": equal keys on other routes or scopes run on their own.
func TestKeysDoNotCollide(t *testing.T) {
	t.Parallel()
	type call struct{ method, target, tenant, key string }
	tests := []struct {
		name string
		a, b call
	}{
		{name: "endpoints", a: call{"POST", "/a", "", "same-key"}, b: call{"POST", "/b", "", "same-key"}},
		{name: "methods", a: call{"POST", "/a", "", "same-key"}, b: call{"PATCH", "/a", "", "same-key"}},
		{name: "scopes", a: call{"POST", "/a", "tenant-1", "same-key"}, b: call{"POST", "/a", "tenant-2", "same-key"}},
		{name: "path and key concatenated", a: call{"POST", "/ab", "", "c"}, b: call{"POST", "/a", "", "bc"}},
		{name: "scope and key concatenated", a: call{"POST", "/a", "t", "xkey"}, b: call{"POST", "/a", "tx", "key"}},
		{name: "escaped slash", a: call{"POST", "/a/b", "", "same-key"}, b: call{"POST", "/a%2Fb", "", "same-key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var runs atomic.Int32
			h := guarded(memory.New(), counted(&runs, func(w http.ResponseWriter, r *http.Request) {
				jsonHandler(http.StatusCreated, `{"tenant":"`+r.Header.Get("X-Tenant")+`","path":"`+r.URL.EscapedPath()+`"}`)(w, r)
			}), idempotency.WithKeyScope(func(_ context.Context, h http.Header) string { return h.Get("X-Tenant") }))
			do := func(c call) *bytes.Buffer {
				r := request(t.Context(), c.method, c.target, c.key, `{}`)
				r.Header.Set("X-Tenant", c.tenant)
				rec := serve(h, r)
				require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
				return rec.Body
			}
			firstA, firstB := do(tt.a).String(), do(tt.b).String()
			assert.Equal(t, int32(2), runs.Load(), "the second call was answered from the first")
			assert.Equal(t, firstA, do(tt.a).String())
			assert.Equal(t, firstB, do(tt.b).String())
			assert.Equal(t, int32(2), runs.Load())
		})
	}
}

// TestKeySpellings checks that spellings of one key name it: a raw token
// and an RFC 8941 quoted string, with white space around, and, under
// WithEnforceUUID4, every spelling of one UUID.
func TestKeySpellings(t *testing.T) {
	t.Parallel()
	const u = "f47ac10b-58cc-4372-a567-0e02b2c3d479"
	tests := []struct {
		name      string
		opts      []idempotency.Option
		spellings []string
	}{
		{name: "raw and quoted", spellings: []string{"order-42", `"order-42"`, "  order-42\t", ` "order-42" `}},
		{name: "quoted with escapes", spellings: []string{`"a\"b\\c"`, `a"b\c`}},
		{
			name:      "UUID spellings",
			opts:      []idempotency.Option{idempotency.WithEnforceUUID4(true)},
			spellings: []string{u, strings.ToUpper(u), "{" + u + "}", "urn:uuid:" + u, strings.ReplaceAll(u, "-", "")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var runs atomic.Int32
			h := guarded(memory.New(), counted(&runs, jsonHandler(http.StatusCreated, `{"id":1}`)), tt.opts...)
			for i, key := range tt.spellings {
				rec := post(t, h, key, `{}`)
				require.Equal(t, http.StatusCreated, rec.Code, "spelling %q: %s", key, rec.Body)
				assert.Equal(t, i > 0, rec.Header().Get("Idempotent-Replayed") == "true", "spelling %q", key)
			}
			assert.Equal(t, int32(1), runs.Load())
		})
	}
}

// TestFingerprint checks SPEC §5.2: a key reused with another method,
// query or body is refused, and nothing runs; without fingerprinting, it
// replays.
func TestFingerprint(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		opts         []idempotency.Option
		first, retry [2]string // target and body

		wantMismatch bool
	}{
		{name: "same request", first: [2]string{"/p?x=1", `{"a":1}`}, retry: [2]string{"/p?x=1", `{"a":1}`}},
		{name: "other body", first: [2]string{"/p", `{"a":1}`}, retry: [2]string{"/p", `{"a":2}`}, wantMismatch: true},
		{name: "body prefix", first: [2]string{"/p", `{"a":1}`}, retry: [2]string{"/p", `{"a":1`}, wantMismatch: true},
		{name: "other query", first: [2]string{"/p?x=1", `{}`}, retry: [2]string{"/p?x=2", `{}`}, wantMismatch: true},
		{name: "query added", first: [2]string{"/p", `{}`}, retry: [2]string{"/p?x=1", `{}`}, wantMismatch: true},
		{
			name: "other body, fingerprinting off", opts: []idempotency.Option{idempotency.WithoutFingerprint()},
			first: [2]string{"/p", `{"a":1}`}, retry: [2]string{"/p?x=1", `{"a":2}`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var runs atomic.Int32
			h := guarded(memory.New(), counted(&runs, jsonHandler(http.StatusCreated, `{"id":1}`)), tt.opts...)
			first := serve(h, request(t.Context(), http.MethodPost, tt.first[0], "fp-key", tt.first[1]))
			require.Equal(t, http.StatusCreated, first.Code)
			retry := serve(h, request(t.Context(), http.MethodPost, tt.retry[0], "fp-key", tt.retry[1]))
			if tt.wantMismatch {
				requireProblem(t, retry, http.StatusUnprocessableEntity, idempotency.StatusMismatch, "mismatch")
			} else {
				assert.Equal(t, "true", retry.Header().Get("Idempotent-Replayed"))
				assert.Equal(t, first.Body.String(), retry.Body.String())
			}
			assert.Equal(t, int32(1), runs.Load())
		})
	}
}

// TestStoreUnavailable checks SPEC §6.1: failing closed, the handler does
// not run; failing open, it runs and a warning is logged; neither logs the
// raw key.
func TestStoreUnavailable(t *testing.T) {
	t.Parallel()
	const key = "raw-client-key-4711"
	tests := []struct {
		name     string
		failOpen bool

		wantStatus int
		wantRuns   int32
		wantLog    string
	}{
		{name: "fail closed", wantStatus: http.StatusServiceUnavailable, wantLog: "level=ERROR"},
		{name: "fail open", failOpen: true, wantStatus: http.StatusCreated, wantRuns: 1, wantLog: "level=WARN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var logs syncBuffer
			var runs atomic.Int32
			var got string
			h := guarded(&failingStore{}, counted(&runs, func(w http.ResponseWriter, r *http.Request) {
				b, err := io.ReadAll(r.Body)
				assert.NoError(t, err)
				got = string(b)
				jsonHandler(http.StatusCreated, `{"id":1}`)(w, r)
			}), idempotency.WithFailOpen(tt.failOpen), idempotency.WithLogger(bufferLogger(&logs)))

			rec := post(t, h, key, `{"amount":1}`)
			assert.Equal(t, tt.wantStatus, rec.Code)
			assert.Equal(t, tt.wantRuns, runs.Load())
			if tt.wantRuns > 0 {
				assert.Equal(t, `{"amount":1}`, got, "the handler read other bytes")
			}
			assert.Contains(t, logs.String(), tt.wantLog)
			assert.Contains(t, logs.String(), "store unavailable")
			assert.NotContains(t, logs.String(), key)
			assert.NotContains(t, rec.Body.String(), key)
		})
	}
}

// TestCancelledHandlerReleases checks SPEC §4.5: a handler that returns
// without writing because its request ended leaves nothing stored, and a
// retry runs it again.
func TestCancelledHandlerReleases(t *testing.T) {
	t.Parallel()
	spy := newSpy()
	var runs atomic.Int32
	started := make(chan struct{})
	h := guarded(spy, counted(&runs, func(w http.ResponseWriter, r *http.Request) {
		if runs.Load() == 1 {
			close(started)
			<-r.Context().Done()
			return
		}
		jsonHandler(http.StatusCreated, `{"id":1}`)(w, r)
	}))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		serve(h, request(ctx, http.MethodPost, "/payments", "cancel-key", `{}`))
	}()
	<-started
	cancel()
	<-done
	assert.Equal(t, "release", spy.waitEnded(t))

	retry := post(t, h, "cancel-key", `{}`)
	assert.Equal(t, http.StatusCreated, retry.Code)
	assert.Empty(t, retry.Header().Get("Idempotent-Replayed"))
	assert.Equal(t, int32(2), runs.Load())
}

// TestWait checks that, under WithWait, a duplicate that finds its key in
// flight is woken when the first request completes, and gets its response
// as a replay.
func TestWait(t *testing.T) {
	t.Parallel()
	spy := newSpy()
	var runs atomic.Int32
	started, proceed := make(chan struct{}), make(chan struct{})
	h := guarded(spy, counted(&runs, func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-proceed
		jsonHandler(http.StatusCreated, `{"id":"pay_1"}`)(w, r)
	}), idempotency.WithWait(time.Minute), idempotency.WithLease(time.Minute))

	firstc := make(chan string, 1)
	go func() { firstc <- post(t, h, "wait-key", `{}`).Body.String() }()
	<-started
	dupc := make(chan *httptest.ResponseRecorder, 1)
	go func() { dupc <- post(t, h, "wait-key", `{}`) }()
	// The duplicate found the key in flight and waits.
	require.Eventually(t, func() bool { return spy.claims.Load() == 2 }, 10*time.Second, time.Millisecond)
	close(proceed)
	assert.Equal(t, `{"id":"pay_1"}`, <-firstc)
	select {
	case dup := <-dupc:
		assert.Equal(t, http.StatusCreated, dup.Code)
		assert.Equal(t, "true", dup.Header().Get("Idempotent-Replayed"))
		assert.Equal(t, `{"id":"pay_1"}`, dup.Body.String())
	case <-time.After(10 * time.Second):
		require.FailNow(t, "the waiting duplicate was not woken by the completion")
	}
	assert.Equal(t, int32(1), runs.Load())
}

// TestUseAfterReturn checks that a response writer or request body that a
// handler kept past its return reaches nothing: not its own response, and
// not another request's bytes.
func TestUseAfterReturn(t *testing.T) {
	t.Parallel()
	var keptW http.ResponseWriter
	var keptBody io.Reader
	h := guarded(memory.New(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if keptW == nil {
			// The first handler leaves its body unread, for later.
			keptW, keptBody = w, r.Body
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusCreated)
			_, _ = io.WriteString(w, `{"id":1}`)
			return
		}
		jsonHandler(http.StatusCreated, `{"id":1}`)(w, r)
	}))
	first := post(t, h, "keep-key-1", `{"secret":"first"}`)
	require.Equal(t, http.StatusCreated, first.Code)
	second := post(t, h, "keep-key-2", `{"secret":"second"}`)
	require.Equal(t, http.StatusCreated, second.Code)

	_, err := keptW.Write([]byte(`{"late":true}`))
	assert.Error(t, err)
	keptW.WriteHeader(http.StatusTeapot)
	keptW.(http.Flusher).Flush()
	n, err := keptBody.Read(make([]byte, 64))
	assert.Zero(t, n)
	assert.ErrorIs(t, err, io.EOF)
	assert.Equal(t, `{"id":1}`, first.Body.String())
	assert.Equal(t, http.StatusCreated, first.Code)
}
