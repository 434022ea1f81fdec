package httpmw

import (
	"errors"
	"net/http"
	"strings"

	"connectrpc.com/connect"

	"github.com/idemkey/idempotency"
)

// rpcErrors writes the middleware's errors to Connect, gRPC and gRPC-Web
// clients in their own protocol (SPEC §7). A Connect unary request is told
// from a REST request with a JSON body by its Connect-Protocol-Version
// header, which every Connect client sends: without the header, a POST of
// application/json is a REST request and gets a problem document.
var rpcErrors = connect.NewErrorWriter(connect.WithRequireConnectProtocolHeader())

// fail answers err, one of the library's errors, in the request's
// protocol: as a Connect, gRPC or gRPC-Web error for those clients, and as
// a problem document for any other.
func (m *middleware) fail(w http.ResponseWriter, r *http.Request, err error) {
	if !rpcErrors.IsSupported(r) {
		m.problems.write(w, err)
		return
	}
	p := m.problems.lookup(err)
	// The message is the problem's detail: what the client has to fix. The
	// codes and the metadata are the interceptor's.
	ce := connect.NewError(p.code, errors.New(m.problems.detail(p, err)))
	if p.label != nil {
		ce.Meta()[idempotency.StatusHeader] = p.label
	}
	if p.retryAfter != nil {
		ce.Meta()["Retry-After"] = p.retryAfter
	}
	// A length an outer handler set cannot be this answer's.
	delete(w.Header(), "Content-Length")
	_ = rpcErrors.Write(w, r, ce)
}

// streamed reports whether r is a gRPC, gRPC-Web or Connect streaming
// request. Their responses are streams of enveloped messages that end in
// trailers: nothing a record holds, and nothing to hold back until the
// handler returns.
func streamed(r *http.Request) bool {
	if r.Method != http.MethodPost {
		return false
	}
	ct := r.Header["Content-Type"]
	if len(ct) == 0 {
		return false
	}
	v := ct[0]
	if i := strings.IndexByte(v, ';'); i >= 0 {
		v = v[:i]
	}
	sub, ok := cutPrefixFold(strings.TrimSpace(v), "application/")
	if !ok {
		return false
	}
	for _, proto := range [...]string{"grpc", "grpc-web"} {
		if rest, ok := cutPrefixFold(sub, proto); ok && (rest == "" || rest[0] == '+') {
			return true
		}
	}
	_, ok = cutPrefixFold(sub, "connect+")
	return ok
}

// cutPrefixFold is [strings.CutPrefix], with the prefix compared in ASCII
// without case.
func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !asciiEqualFold(s[:len(prefix)], prefix) {
		return s, false
	}
	return s[len(prefix):], true
}
