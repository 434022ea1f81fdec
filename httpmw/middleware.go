package httpmw

import (
	"errors"
	"io"
	"math"
	"net/http"
	"slices"
	"sync"

	"github.com/idemkey/idempotency"
)

// New returns a middleware that makes the handlers it wraps idempotent, on
// an [idempotency.Engine] over store configured by opts. It panics if store
// is nil, if an option cannot work, or, when the middleware is applied, if
// the handler is nil. The middleware and the handlers it returns are safe
// for concurrent use.
func New(store idempotency.Store, opts ...idempotency.Option) func(http.Handler) http.Handler {
	m := newMiddleware(idempotency.NewEngine(store, opts...))
	return func(next http.Handler) http.Handler {
		if next == nil {
			panic("httpmw: New: the handler must not be nil")
		}
		return &handler{m: m, next: next}
	}
}

// middleware holds what every request needs, resolved once from the
// engine's settings so that the request path does no work the
// configuration already decided.
type middleware struct {
	e            *idempotency.Engine
	methods      []string
	keyHeader    string
	replayHeader string
	requireKey   bool
	enforceUUID4 bool
	fingerprint  bool
	maxBody      int64
	maxResponse  int64
	stored       []string
	problems     problems
}

func newMiddleware(e *idempotency.Engine) *middleware {
	s := e.Settings()
	m := &middleware{
		e:            e,
		methods:      s.ApplicableMethods,
		keyHeader:    s.IdempotencyHeader,
		replayHeader: s.ReplayHeader,
		// The capacity of one makes an Add to this header copy the slice
		// rather than write into the one that every replay shares.
		requireKey:   s.RequireKey,
		enforceUUID4: s.EnforceUUID4,
		fingerprint:  s.Fingerprint,
		// One byte beyond the limit is read to tell an oversized body
		// apart, and a buffer's length is an int.
		maxBody:     min(s.MaxBodySize, int64(math.MaxInt-1)),
		maxResponse: s.MaxResponseSize,
	}
	for _, name := range s.StoredHeaders {
		name = http.CanonicalHeaderKey(name)
		if !idempotency.NeverStored(name) {
			m.stored = append(m.stored, name)
		}
	}
	m.problems = newProblems(s)
	return m
}

// handler is the middleware applied to one handler.
type handler struct {
	m    *middleware
	next http.Handler
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m := h.m
	if !m.applies(r.Method) {
		h.next.ServeHTTP(w, r)
		return
	}
	values := r.Header[m.keyHeader]
	if len(values) == 0 {
		h.withoutKey(w, r)
		return
	}
	key, err := idempotency.ParseKey(values, m.enforceUUID4)
	if err != nil {
		m.e.Rejected(r.Context(), routeOf(r), err)
		m.fail(w, r, err)
		return
	}
	if key == "" {
		h.withoutKey(w, r)
		return
	}
	h.guard(w, r, key)
}

func (m *middleware) applies(method string) bool {
	for _, want := range m.methods {
		if method == want {
			return true
		}
	}
	return false
}

func (h *handler) withoutKey(w http.ResponseWriter, r *http.Request) {
	if h.m.requireKey {
		h.m.e.Rejected(r.Context(), routeOf(r), idempotency.ErrKeyRequired)
		h.m.fail(w, r, idempotency.ErrKeyRequired)
		return
	}
	h.next.ServeHTTP(w, r)
}

// guard runs one request that carries a key: it reads the body, asks the
// engine, and then replays, answers a problem, or runs the handler.
func (h *handler) guard(w http.ResponseWriter, r *http.Request, key string) {
	m := h.m
	// An RPC stream is not read ahead: its first messages may wait for the
	// handler's answers, and nothing of it is ever stored (see execute).
	stream := streamed(r)
	var body []byte
	if !stream {
		// The limit is checked before the store is asked, so that a
		// request that cannot run never takes a claim.
		if r.ContentLength > m.maxBody {
			m.e.Rejected(r.Context(), routeOf(r), idempotency.ErrBodyTooLarge)
			m.fail(w, r, idempotency.ErrBodyTooLarge)
			return
		}
		buf := getBuffer(&requestBuffers)
		defer putBuffer(&requestBuffers, buf)
		var err error
		body, err = readBody((*buf)[:0], r.Body, r.ContentLength, m.maxBody)
		*buf = body
		if err != nil {
			m.e.Rejected(r.Context(), routeOf(r), err)
			m.readFailed(w, r, err)
			return
		}
	}

	path := r.URL.EscapedPath()
	req := idempotency.Request{
		Scope:   m.e.ScopeOf(r.Context(), r.Header),
		Route:   r.Method + " " + path,
		Pattern: r.Pattern,
		Key:     key,
	}
	if m.fingerprint {
		var f idempotency.Fingerprinter
		f.AddString(r.Method)
		f.AddString(path)
		f.AddString(r.URL.RawQuery)
		f.AddBytes(body)
		req.Fingerprint = f.Sum()
	}

	exec, rec, err := m.e.Begin(r.Context(), req)
	switch {
	case err != nil:
		m.fail(w, r, err)
	case rec != nil && stream:
		// The record was stored for a request in another protocol, such
		// as Connect's JSON: its bytes mean nothing to this client.
		m.fail(w, r, idempotency.ErrFingerprintMismatch)
	case rec != nil:
		m.replay(w, rec)
	case !exec.Protected() && stream:
		h.next.ServeHTTP(w, r)
	case !exec.Protected():
		// The store failed and the engine fails open: the handler runs
		// unguarded, on the body that was read.
		h.unprotected(w, r, body)
	default:
		h.execute(w, r, exec, &req, body, stream)
	}
}

// unprotected runs the handler without a claim, on the body that was read.
func (h *handler) unprotected(w http.ResponseWriter, r *http.Request, body []byte) {
	b := &bodyReader{b: body}
	r.Body = b
	// The body's bytes go back to a pool when the request ends; a reader
	// the handler kept past its return must not see another request's.
	defer b.detach()
	h.next.ServeHTTP(w, r)
}

// readFailed answers a request whose body could not be read.
func (m *middleware) readFailed(w http.ResponseWriter, r *http.Request, err error) {
	var tooLarge *http.MaxBytesError
	if errors.Is(err, idempotency.ErrBodyTooLarge) || errors.As(err, &tooLarge) {
		m.fail(w, r, idempotency.ErrBodyTooLarge)
		return
	}
	m.fail(w, r, errBodyUnreadable)
}

// replay writes a stored response: its stored headers, the replay marker,
// its status and its body, byte for byte.
func (m *middleware) replay(w http.ResponseWriter, rec *idempotency.Record) {
	h := w.Header()
	// The record is shared with other replays: each gets values of its own,
	// in one allocation, so that an outer handler that edits a value in
	// place never changes what another replay sends.
	n := 1
	for _, values := range rec.Header {
		n += len(values)
	}
	own := make([]string, 0, n)
	for name, values := range rec.Header {
		if !idempotency.NeverStored(http.CanonicalHeaderKey(name)) {
			start := len(own)
			own = append(own, values...)
			h[name] = own[start:len(own):len(own)]
		}
	}
	own = append(own, "true")
	h[m.replayHeader] = own[len(own)-1:]
	w.WriteHeader(rec.Status)
	if len(rec.Body) > 0 {
		_, _ = w.Write(rec.Body)
	}
}

// execute runs the handler on a claimed key, then stores its response or
// releases the claim, and delivers the response. A response that is not
// stored is logged.
func (h *handler) execute(w http.ResponseWriter, r *http.Request, exec *idempotency.Execution, req *idempotency.Request, body []byte, stream bool) {
	c := &capture{w: w, m: h.m}
	if stream {
		// Held back until the handler returns, a stream would stall; and
		// its enveloped messages and trailers are nothing a record holds.
		// The claim still turns away duplicates while the handler runs.
		c.passing, c.reason = true, rpcProtocol
	} else {
		c.body.b = body
		r.Body = &c.body
	}
	returned := false
	defer func() {
		if !returned {
			// The handler panicked (or called runtime.Goexit): nothing it
			// wrote is stored, and the panic goes on once the claim is
			// released, so that a retry runs the handler again.
			c.end()
			_ = exec.Skip(panicked.String())
		}
	}()
	if ctx := exec.Context(r.Context()); ctx != r.Context() {
		// The store hands the handler a transaction through its context.
		r = r.WithContext(ctx)
	}
	h.next.ServeHTTP(c, r)
	returned = true
	c.finish(r, exec)
}

// bodyReader gives the handler the request body that the middleware read.
type bodyReader struct {
	b []byte
}

func (r *bodyReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

// WriteTo lets io.Copy and io.ReadAll-style readers take the body without
// an intermediate buffer.
func (r *bodyReader) WriteTo(w io.Writer) (int64, error) {
	if len(r.b) == 0 {
		return 0, nil
	}
	n, err := w.Write(r.b)
	r.b = r.b[n:]
	return int64(n), err
}

func (r *bodyReader) detach() { r.b = nil }

// Close does nothing: the server closes the request's own body.
func (r *bodyReader) Close() error { return nil }

// readBody appends r's content to dst, reading at most limit+1 bytes; it
// returns an error wrapping [idempotency.ErrBodyTooLarge] when there were
// more than limit. size is the declared length, or -1.
func readBody(dst []byte, r io.Reader, size, limit int64) ([]byte, error) {
	if r == nil || r == http.NoBody {
		return dst, nil
	}
	if size > 0 && int64(cap(dst)) <= size {
		// Room for one byte more than declared lets the read that ends the
		// body report the end at once.
		dst = slices.Grow(dst, int(min(size, limit)+1))
	}
	for {
		room := limit + 1 - int64(len(dst))
		if len(dst) == cap(dst) {
			// Grow geometrically, but never past the one byte beyond the
			// limit that tells an oversized body apart.
			dst = slices.Grow(dst, int(min(int64(max(cap(dst), 512)), room)))
		}
		end := len(dst) + int(min(int64(cap(dst)-len(dst)), room))
		n, err := r.Read(dst[len(dst):end])
		dst = dst[:len(dst)+n]
		if int64(len(dst)) > limit {
			return dst, idempotency.ErrBodyTooLarge
		}
		if err == io.EOF {
			return dst, nil
		}
		if err != nil {
			return dst, err
		}
	}
}

// Byte buffers for request and response bodies are pooled; those that grew
// large are left to the garbage collector, so that one large request does
// not pin its memory for good.
const maxPooledBuffer = 64 << 10

var (
	requestBuffers  = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}
	responseBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}
	headerMaps      = sync.Pool{New: func() any { return make(http.Header, 8) }}
)

func getBuffer(p *sync.Pool) *[]byte { return p.Get().(*[]byte) }

func putBuffer(p *sync.Pool, b *[]byte) {
	if cap(*b) <= maxPooledBuffer {
		*b = (*b)[:0]
		p.Put(b)
	}
}
