package httpmw_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// These tests run the middleware in a real server, for what a recorder
// cannot show: a client that goes away, hijacking, informational
// responses and deadlines.

func startServer(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

type response struct {
	status int
	header http.Header
	body   string
}

// send posts body with key to srv. It may run outside the test's
// goroutine, so it reports every failure as its error.
func send(ctx context.Context, srv *httptest.Server, key, body string) (*response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/payments", strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	resp, err := srv.Client().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	return &response{status: resp.StatusCode, header: resp.Header, body: string(b)}, nil
}

// TestClientGoneWorkStored checks SPEC §4.5: a handler that finishes its
// response after its client went away is stored, and that client's retry
// gets it, without a second run.
func TestClientGoneWorkStored(t *testing.T) {
	t.Parallel()
	spy := newSpy()
	var runs atomic.Int32
	started := make(chan struct{})
	srv := startServer(t, guarded(spy, counted(&runs, func(w http.ResponseWriter, r *http.Request) {
		if runs.Load() == 1 {
			close(started)
			<-r.Context().Done()
		}
		jsonHandler(http.StatusCreated, `{"id":"pay_1"}`)(w, r)
	})))

	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, err := send(ctx, srv, "gone-key", `{"amount":1}`)
		errc <- err
	}()
	<-started
	cancel()
	require.Error(t, <-errc)
	assert.Equal(t, "complete", spy.waitEnded(t))

	retry, err := send(t.Context(), srv, "gone-key", `{"amount":1}`)
	require.NoError(t, err)
	assert.Equal(t, http.StatusCreated, retry.status)
	assert.Equal(t, "true", retry.header.Get("Idempotent-Replayed"))
	assert.Equal(t, `{"id":"pay_1"}`, retry.body)
	assert.Equal(t, int32(1), runs.Load())
}

// TestHijackIsNotStored checks that a handler that takes the connection
// over answers its client itself, after what it wrote before, and that
// nothing is stored.
func TestHijackIsNotStored(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		handler func(w http.ResponseWriter) (raw string)
	}{
		{
			name: "whole response raw",
			handler: func(http.ResponseWriter) string {
				return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" +
					"Content-Length: 12\r\nConnection: close\r\n\r\n{\"raw\":true}"
			},
		},
		{
			name: "header written before",
			handler: func(w http.ResponseWriter) string {
				w.Header().Set("Content-Type", "application/json")
				w.Header().Set("Content-Length", "12")
				w.Header().Set("Connection", "close")
				w.WriteHeader(http.StatusOK)
				return `{"raw":true}`
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			spy := newSpy()
			var runs atomic.Int32
			srv := startServer(t, guarded(spy, counted(&runs, func(w http.ResponseWriter, _ *http.Request) {
				raw := tt.handler(w)
				conn, rw, err := http.NewResponseController(w).Hijack()
				if !assert.NoError(t, err) {
					return
				}
				defer conn.Close()
				_, _ = rw.WriteString(raw)
				assert.NoError(t, rw.Flush())
			})))
			for i := range 2 {
				res, err := send(t.Context(), srv, "hijack-key", `{}`)
				require.NoError(t, err)
				assert.Equal(t, http.StatusOK, res.status)
				assert.Equal(t, `{"raw":true}`, res.body)
				assert.Empty(t, res.header.Get("Idempotent-Replayed"))
				assert.Equal(t, "release", spy.waitEnded(t), "run %d", i)
			}
			assert.Equal(t, int32(2), runs.Load())
			assert.Zero(t, spy.completes.Load())
		})
	}
}

// TestInformationalResponse checks that a 103 reaches the client at once
// and is not taken for the final status, which is stored.
func TestInformationalResponse(t *testing.T) {
	t.Parallel()
	var runs atomic.Int32
	srv := startServer(t, guarded(newSpy(), counted(&runs, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		jsonHandler(http.StatusCreated, `{"id":1}`)(w, r)
	})))

	var informational []int
	ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, _ textproto.MIMEHeader) error {
			informational = append(informational, code)
			return nil
		},
	})
	first, err := send(ctx, srv, "hints-key", `{}`)
	require.NoError(t, err)
	assert.Equal(t, []int{http.StatusEarlyHints}, informational)
	assert.Equal(t, http.StatusCreated, first.status)
	assert.Equal(t, `{"id":1}`, first.body)

	retry, err := send(t.Context(), srv, "hints-key", `{}`)
	require.NoError(t, err)
	assert.Equal(t, http.StatusCreated, retry.status)
	assert.Equal(t, "true", retry.header.Get("Idempotent-Replayed"))
	assert.Equal(t, `{"id":1}`, retry.body)
	assert.Equal(t, int32(1), runs.Load())
}

// TestResponseController checks that http.ResponseController reaches the
// server's writer through the middleware's, and that setting a deadline
// does not keep the response from being stored.
func TestResponseController(t *testing.T) {
	t.Parallel()
	var runs atomic.Int32
	srv := startServer(t, guarded(newSpy(), counted(&runs, func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		assert.NoError(t, rc.SetWriteDeadline(time.Now().Add(time.Minute)))
		assert.NoError(t, rc.SetReadDeadline(time.Now().Add(time.Minute)))
		jsonHandler(http.StatusCreated, `{"id":1}`)(w, r)
	})))
	for range 2 {
		res, err := send(t.Context(), srv, "controller-key", `{}`)
		require.NoError(t, err)
		assert.Equal(t, http.StatusCreated, res.status)
		assert.Equal(t, `{"id":1}`, res.body)
	}
	assert.Equal(t, int32(1), runs.Load())
}
