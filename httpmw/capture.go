package httpmw

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/idemkey/idempotency"
)

var (
	_ http.ResponseWriter = (*capture)(nil)
	_ http.Flusher        = (*capture)(nil)
	_ http.Hijacker       = (*capture)(nil)
	_ io.StringWriter     = (*capture)(nil)
)

// errAfterReturn answers a write through a response writer whose handler
// has returned, which net/http forbids too.
var errAfterReturn = errors.New("httpmw: response written after the handler returned")

// capture is the response writer a guarded handler writes to. It keeps the
// status and body until the handler returns, so that the response can be
// stored before any of it reaches the client. Headers go straight into the
// client's header map, which net/http sends only with the status: that
// costs no copy, and a response that is not stored needs nothing undone.
//
// When the handler flushes or hijacks, or writes more than the response
// size limit, capture switches to passing everything through, and the
// response is not stored.
type capture struct {
	w       http.ResponseWriter
	m       *middleware
	buf     *[]byte // the body so far, from responseBuffers; nil until written
	status  int
	wrote   bool // the final status is set
	passing bool // writes go to the client; nothing will be stored
	large   bool // passing because the response is over the size limit
	done    bool // the handler returned
	body    bodyReader
}

// Header returns the client's header map.
func (c *capture) Header() http.Header { return c.w.Header() }

// WriteHeader sets the status. As with net/http, the first final status
// wins, and an informational (1xx) status other than 101 is sent at once.
func (c *capture) WriteHeader(code int) {
	switch {
	case c.done:
		return
	case c.passing:
		c.w.WriteHeader(code)
		return
	case c.wrote:
		return
	case code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols:
		c.w.WriteHeader(code)
		return
	}
	c.status = code
	c.wrote = true
	if code < 200 || code > 599 {
		// A record holds a final status from 200 to 599; anything else
		// (101, or a code net/http rejects) is the client's business.
		_ = c.pass()
	}
}

// Write buffers p, or passes it through.
func (c *capture) Write(p []byte) (int, error) {
	if ok, err := c.prepare(len(p)); !ok {
		if err != nil {
			return 0, err
		}
		return c.w.Write(p)
	}
	*c.buf = append(*c.buf, p...)
	return len(p), nil
}

// WriteString buffers s, or passes it through, without converting it to a
// byte slice first.
func (c *capture) WriteString(s string) (int, error) {
	if ok, err := c.prepare(len(s)); !ok {
		if err != nil {
			return 0, err
		}
		return io.WriteString(c.w, s)
	}
	*c.buf = append(*c.buf, s...)
	return len(s), nil
}

// prepare readies a write of n bytes. It reports true when they are to be
// buffered; false with no error when they go to the client directly.
func (c *capture) prepare(n int) (bool, error) {
	if c.done {
		return false, errAfterReturn
	}
	if c.passing {
		return false, nil
	}
	if !c.wrote {
		c.status, c.wrote = http.StatusOK, true
	}
	if c.status == http.StatusNoContent || c.status == http.StatusNotModified {
		return false, http.ErrBodyNotAllowed
	}
	if c.buf == nil {
		c.buf = getBuffer(&responseBuffers)
	}
	if int64(len(*c.buf))+int64(n) > c.m.maxResponse {
		c.large = true
		return false, c.pass()
	}
	return true, nil
}

// pass switches to passing through: what was written so far goes to the
// client.
func (c *capture) pass() error {
	c.passing = true
	if c.wrote {
		c.w.WriteHeader(c.status)
	}
	if c.buf == nil {
		return nil
	}
	var err error
	if len(*c.buf) > 0 {
		_, err = c.w.Write(*c.buf)
	}
	putBuffer(&responseBuffers, c.buf)
	c.buf = nil
	return err
}

// Flush sends what was written to the client; the response is then passed
// through and not stored.
func (c *capture) Flush() { _ = c.FlushError() }

// FlushError is [capture.Flush] with an error, as [http.ResponseController]
// calls it.
func (c *capture) FlushError() error {
	if c.done {
		return errAfterReturn
	}
	if !c.passing {
		if !c.wrote {
			c.status, c.wrote = http.StatusOK, true
		}
		if err := c.pass(); err != nil {
			return err
		}
	}
	return http.NewResponseController(c.w).Flush()
}

// Hijack hands the connection to the handler, after what was written so
// far, as net/http does; the response is then not stored.
func (c *capture) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if c.done {
		return nil, nil, errAfterReturn
	}
	if !c.passing && c.wrote {
		if err := c.pass(); err != nil {
			return nil, nil, err
		}
	}
	conn, rw, err := http.NewResponseController(c.w).Hijack()
	if err == nil {
		c.passing = true
	}
	return conn, rw, err
}

// Unwrap returns the client's response writer, for
// [http.ResponseController].
func (c *capture) Unwrap() http.ResponseWriter { return c.w }

// finish runs when the handler returned: it stores the response or
// releases the claim, then delivers what the client has not got yet.
func (c *capture) finish(r *http.Request, exec *idempotency.Execution) {
	defer c.end()
	if c.passing {
		_ = exec.Skip(passReason(c.large))
		return
	}
	if !c.wrote && r.Context().Err() != nil {
		// The handler gave up because its request ended; a retry must run
		// it again.
		_ = exec.Skip(idempotency.ReasonContextEnded)
		return
	}
	if !c.wrote {
		c.status = http.StatusOK
	}
	var body []byte
	if c.buf != nil {
		body = *c.buf
	}
	h := c.w.Header()
	// The claim ends before the client sees anything, so that a retry
	// sent right after the answer finds the record, or runs anew.
	if storable(h, body) {
		stored := headerMaps.Get().(http.Header)
		c.m.storedHeader(stored, h, body)
		rec := idempotency.Record{Status: c.status, Header: stored, Body: body}
		// Complete encodes the record before it returns, so the header
		// map and the body buffer can be reused afterwards.
		_ = exec.Complete(&rec)
		clear(stored)
		headerMaps.Put(stored)
	} else {
		_ = exec.Skip(idempotency.ReasonNotJSON)
	}
	c.w.WriteHeader(c.status)
	if len(body) > 0 {
		_, _ = c.w.Write(body)
	}
}

// end makes the writer and the request body unusable, and returns the
// buffer: a handler that kept either past its return must not reach
// another request's bytes.
func (c *capture) end() {
	c.done = true
	c.body.detach()
	if c.buf != nil {
		putBuffer(&responseBuffers, c.buf)
		c.buf = nil
	}
}

// storable reports whether a completed response is one the middleware
// stores: no body at all, or a JSON body (SPEC §4.2).
func storable(h http.Header, body []byte) bool {
	if len(body) == 0 {
		return true
	}
	ct := h["Content-Type"]
	if len(ct) == 0 || !isJSONType(ct[0]) {
		return false
	}
	// An encoded body cannot be checked without decoding it; it is stored
	// as written.
	return encoded(h) || validJSON(body)
}

// isJSONType reports whether a Content-Type value is application/json or a
// +json type, with any parameters.
func isJSONType(v string) bool {
	if i := strings.IndexByte(v, ';'); i >= 0 {
		v = v[:i]
	}
	v = strings.TrimSpace(v)
	if asciiEqualFold(v, "application/json") {
		return true
	}
	const suffix = "+json"
	slash := strings.IndexByte(v, '/')
	return slash > 0 && len(v)-len(suffix) > slash+1 && asciiEqualFold(v[len(v)-len(suffix):], suffix)
}

// encoded reports whether the response has a Content-Encoding other than
// identity.
func encoded(h http.Header) bool {
	ce := h["Content-Encoding"]
	if len(ce) == 0 {
		return false
	}
	v := strings.TrimSpace(ce[0])
	return v != "" && !asciiEqualFold(v, "identity")
}

// asciiEqualFold compares case-insensitively in ASCII only, as media types
// and content codings are compared: Unicode folding would take "ſ" for "s".
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range len(a) {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// storedHeader copies into dst the allowlisted headers of h. An encoded
// body's Content-Encoding is kept even when the allowlist leaves it out:
// without it, the replayed bytes would mean nothing to the client.
func (m *middleware) storedHeader(dst, h http.Header, body []byte) {
	for _, name := range m.stored {
		if v := h[name]; len(v) > 0 {
			dst[name] = v
		}
	}
	if len(body) > 0 && encoded(h) {
		dst["Content-Encoding"] = h["Content-Encoding"]
	}
}

// passReason says why a response that was passed through is not stored.
func passReason(large bool) string {
	if large {
		return idempotency.ReasonTooLarge
	}
	return idempotency.ReasonStreamed
}
