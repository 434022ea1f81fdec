package httpmw_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/httpmw"
	"github.com/idemkey/idempotency/store/memory"
)

// fuzzAnswer is what a fuzzed handler writes.
type fuzzAnswer struct {
	informational int // a 1xx status sent first, or 0
	status        int // the final status; 0 writes none, so net/http's 200 applies
	second        int // a final status written again after the first, or 0
	contentType   string
	encoding      string
	body          []byte
	chunk         int // the size of each Write
}

func (a *fuzzAnswer) serveHTTP(w http.ResponseWriter) {
	if a.contentType != "" {
		w.Header().Set("Content-Type", a.contentType)
	}
	if a.encoding != "" {
		w.Header().Set("Content-Encoding", a.encoding)
	}
	if a.informational != 0 {
		w.WriteHeader(a.informational)
	}
	if a.status != 0 {
		w.WriteHeader(a.status)
	}
	if a.second != 0 {
		w.WriteHeader(a.second)
	}
	for n, rest := 0, a.body; len(rest) > 0; n++ {
		part := rest[:min(a.chunk, len(rest))]
		rest = rest[len(part):]
		// Both ways of writing a body, as handlers use them.
		if n%2 == 0 {
			_, _ = w.Write(part)
		} else {
			_, _ = io.WriteString(w, string(part)) //nolint:staticcheck // exercises the writer's WriteString path
		}
	}
}

// fuzzReply is what the client received.
type fuzzReply struct {
	status      int
	contentType []string
	encoding    []string
	replayed    bool
	body        []byte
}

func (r *fuzzReply) String() string {
	return strconv.Itoa(r.status) + " " + strconv.Quote(strings.Join(r.contentType, ",")) + " " +
		strconv.Quote(strings.Join(r.encoding, ",")) + " " + strconv.Quote(string(r.body))
}

func (r *fuzzReply) sameAs(o *fuzzReply) bool {
	return r.status == o.status && bytes.Equal(r.body, o.body) &&
		strings.Join(r.contentType, "\n") == strings.Join(o.contentType, "\n") &&
		strings.Join(r.encoding, "\n") == strings.Join(o.encoding, "\n")
}

// fuzzServer serves whichever handler the current fuzz input installed.
// Inputs run one at a time in each fuzzing process, so one server serves
// them all.
type fuzzServer struct {
	srv     *httptest.Server
	client  *http.Client
	handler atomic.Pointer[http.Handler]
}

func newFuzzServer(f *testing.F) *fuzzServer {
	s := &fuzzServer{}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		(*s.handler.Load()).ServeHTTP(w, r)
	}))
	// A handler that writes its status twice makes net/http complain.
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.srv.Start()
	f.Cleanup(s.srv.Close)
	// The client must hand the body over exactly as it came: no gzip
	// decoding of its own.
	s.client = &http.Client{Transport: &http.Transport{DisableCompression: true}}
	f.Cleanup(s.client.CloseIdleConnections)
	return s
}

func (s *fuzzServer) do(t *testing.T, h http.Handler, key string) *fuzzReply {
	t.Helper()
	s.handler.Store(&h)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.srv.URL+"/charges", strings.NewReader(`{"amount":1}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set(idempotency.DefaultIdempotencyHeader, key)
	}
	res, err := s.client.Do(req)
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("reading the body: %v", err)
	}
	return &fuzzReply{
		status:      res.StatusCode,
		contentType: res.Header.Values("Content-Type"),
		encoding:    res.Header.Values("Content-Encoding"),
		replayed:    res.Header.Get(idempotency.DefaultReplayHeader) == "true",
		body:        body,
	}
}

// outcomeStore counts what the middleware did with each claim.
type outcomeStore struct {
	idempotency.Store
	completed, released atomic.Int32
}

func (s *outcomeStore) Complete(ctx context.Context, key, token string, record []byte, expiry time.Duration) error {
	s.completed.Add(1)
	return s.Store.Complete(ctx, key, token, record, expiry)
}

func (s *outcomeStore) Release(ctx context.Context, key, token string) error {
	s.released.Add(1)
	return s.Store.Release(ctx, key, token)
}

// FuzzCapture sends the answers of handlers that write arbitrary statuses
// (informational ones too, and a final status twice), content types,
// content encodings and bodies, in several writes, through the middleware
// and a real HTTP server, and checks that:
//   - the client gets exactly what the handler wrote, as it would without
//     the middleware (status, body, Content-Type, Content-Encoding);
//   - the middleware stores exactly the responses that SPEC §4.2 names and
//     the default policy keeps (not 429 nor 503, §4.6), by an oracle of its
//     own: no body at all, or a JSON media type
//     (application/json or any +json, with parameters) and either a
//     Content-Encoding other than identity or a body that is valid JSON,
//     or no Content-Type, no Content-Encoding and a body that is valid
//     JSON;
//   - a stored response is replayed byte for byte, without running the
//     handler; one that is not stored runs again.
func FuzzCapture(f *testing.F) {
	gz := []byte{0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xaa, 0xae, 0x05, 0x04, 0x00, 0x00, 0xff, 0xff}
	f.Add(0, 201, 0, "application/json", "", []byte(`{"id":1}`), uint8(3))
	f.Add(0, 200, 0, "application/json; charset=utf-8", "", []byte(`[1, 2]`), uint8(1))
	f.Add(0, 422, 0, "application/problem+json", "", []byte(`{"title":"x"}`), uint8(5))
	f.Add(0, 200, 0, "APPLICATION/VND.API+JSON ; q=1", "identity", []byte(` "s" `), uint8(0))
	f.Add(0, 200, 0, "text/html", "", []byte(`<p>hi</p>`), uint8(2))
	f.Add(0, 200, 0, "", "", []byte(`{"sniffed":true}`), uint8(0))
	f.Add(0, 201, 0, "application/json", "gzip", gz, uint8(4))
	f.Add(0, 201, 0, "text/plain", "gzip", gz, uint8(4))
	f.Add(0, 201, 0, "application/json", "", []byte(`{"id":`), uint8(4))
	f.Add(0, 204, 0, "", "", []byte(nil), uint8(0))
	f.Add(0, 204, 0, "application/json", "", []byte(`{"dropped":true}`), uint8(0))
	f.Add(0, 302, 0, "", "", []byte(nil), uint8(0))
	f.Add(103, 201, 500, "application/json", "", []byte(`{}`), uint8(0))
	f.Add(0, 0, 0, "application/json", "", []byte(`null`), uint8(1))
	f.Add(0, 500, 201, "application/+json", "", []byte(`{}`), uint8(0))
	f.Add(102, 0, 0, "+json", "", []byte(nil), uint8(0))
	srv := newFuzzServer(f)
	var keys atomic.Int64
	f.Fuzz(func(t *testing.T, informational, status, second int, contentType, encoding string, body []byte, chunk uint8) {
		a := &fuzzAnswer{
			contentType: headerValue(contentType),
			encoding:    headerValue(encoding),
			body:        body,
			chunk:       1 + int(chunk),
		}
		if informational != 0 {
			// 101 switches protocols: it is a final status, not one the
			// middleware can capture.
			if a.informational = 100 + int(uint(informational)%100); a.informational == 101 {
				a.informational = 0
			}
		}
		if status != 0 {
			a.status = 200 + int(uint(status)%400)
		}
		if second != 0 {
			a.second = 200 + int(uint(second)%400)
		}
		var runs atomic.Int32
		handler := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			runs.Add(1)
			a.serveHTTP(w)
		})
		bare := srv.do(t, handler, "")

		store := &outcomeStore{Store: memory.New()}
		guarded := httpmw.New(store, idempotency.WithLogger(slog.New(slog.DiscardHandler)))(handler)
		key := "fuzz-" + strconv.FormatInt(keys.Add(1), 10)
		first := srv.do(t, guarded, key)
		if !first.sameAs(bare) || first.replayed {
			t.Fatalf("through the middleware the client got %v (replayed %v), without it %v", first, first.replayed, bare)
		}
		stored := store.completed.Load() == 1
		if want := wantStored(a, bare.status, bare.body); stored != want {
			t.Fatalf("stored %v, want %v, for %v written with Content-Type %q, Content-Encoding %q",
				stored, want, bare, a.contentType, a.encoding)
		}
		if stored == (store.released.Load() == 1) {
			t.Fatalf("the claim was completed %d and released %d times", store.completed.Load(), store.released.Load())
		}

		retry := srv.do(t, guarded, key)
		switch {
		case stored && (!retry.replayed || runs.Load() != 2):
			t.Fatalf("a stored response was not replayed: replayed %v, handler runs %d", retry.replayed, runs.Load())
		case !stored && (retry.replayed || runs.Load() != 3):
			t.Fatalf("a response that was not stored was replayed: replayed %v, handler runs %d", retry.replayed, runs.Load())
		case !retry.sameAs(first):
			t.Fatalf("the retry got %v, the first request %v", retry, first)
		}
	})
}

// headerValue makes s a value that a client can read back: net/http sends
// any bytes, but a client rejects control characters in a response.
func headerValue(s string) string {
	return strings.Map(func(r rune) rune {
		if (r < 0x20 && r != '\t') || r == 0x7f {
			return '_'
		}
		return r
	}, s)
}

// wantStored is the oracle for SPEC §4.2: what the middleware stores,
// given what the handler wrote and the body the client received.
func wantStored(a *fuzzAnswer, status int, delivered []byte) bool {
	if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
		// The default store policy keeps neither (SPEC §4.6).
		return false
	}
	if len(delivered) == 0 {
		return true
	}
	enc := strings.TrimSpace(a.encoding)
	encoded := enc != "" && !strings.EqualFold(enc, "identity")
	if a.contentType == "" {
		// No type: only a body that parses as JSON, which encoded bytes
		// cannot show.
		return !encoded && json.Valid(delivered)
	}
	if !jsonMediaType(a.contentType) {
		return false
	}
	return encoded || json.Valid(delivered)
}

// jsonMediaType reports whether a Content-Type names application/json or a
// type whose subtype has a +json suffix, whatever its parameters.
func jsonMediaType(ct string) bool {
	mediaType, _, _ := strings.Cut(ct, ";")
	typ, subtype, ok := strings.Cut(strings.ToLower(strings.TrimSpace(mediaType)), "/")
	if !ok || typ == "" {
		return false
	}
	return (typ == "application" && subtype == "json") ||
		(strings.HasSuffix(subtype, "+json") && len(subtype) > len("+json"))
}
