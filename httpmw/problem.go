package httpmw

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"connectrpc.com/connect"

	"github.com/idemkey/idempotency"
)

// problemTypeBase prefixes the type URI of every problem document the
// middleware writes; the fragment names the problem.
const problemTypeBase = "https://github.com/idemkey/idempotency#"

// errBodyUnreadable is answered when the request body could not be read
// (the client went away mid-body, or an outer reader failed).
var errBodyUnreadable = errors.New("httpmw: request body could not be read")

var problemContentType = []string{"application/problem+json"}[:1:1]

// A problem is one of the middleware's error responses, rendered once.
type problem struct {
	status     int
	code       connect.Code // for Connect, gRPC and gRPC-Web clients
	label      []string     // the Idempotency-Status value, or nil
	retryAfter []string     // the Retry-After value, or nil
	typ, title string
	detail     string // what to fix; "" when it depends on the error
	body       []byte
}

// problems holds the middleware's error responses. All but the invalid key
// one, whose detail names what is wrong, are rendered at construction.
type problems struct {
	keyHeader   string
	keyRequired problem
	invalidKey  problem
	inFlight    problem
	mismatch    problem
	tooLarge    problem
	unavailable problem
	unreadable  problem
	canceled    problem
	deadline    problem
	internal    problem
}

// problemDoc is an RFC 9457 problem document.
type problemDoc struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

func newProblems(s idempotency.Settings) problems {
	ps := problems{
		keyHeader: s.IdempotencyHeader,
		keyRequired: newProblem(idempotency.ErrKeyRequired, "key-required",
			"This request needs an idempotency key: send a new unique value in the "+s.IdempotencyHeader+
				" header, and the same value when you retry it."),
		invalidKey: newProblem(idempotency.ErrInvalidKey, "invalid-key", ""),
		inFlight: newProblem(idempotency.ErrInFlight, "in-flight",
			"A request with this idempotency key is still being processed. Retry it with the same key after "+
				"the Retry-After delay to get its response."),
		mismatch: newProblem(idempotency.ErrFingerprintMismatch, "mismatch",
			"This idempotency key was used before with a different request (method, path, query or body). "+
				"Send a new key with a new request."),
		tooLarge: newProblem(idempotency.ErrBodyTooLarge, "body-too-large",
			"The request body is larger than "+strconv.FormatInt(s.MaxBodySize, 10)+
				" bytes, the limit for requests with an idempotency key."),
		unavailable: newProblem(idempotency.ErrStoreUnavailable, "store-unavailable",
			"The idempotency store cannot be reached, so the request was not processed. "+
				"Retry it later with the same key."),
		unreadable: problem{
			status: http.StatusBadRequest,
			code:   connect.CodeInvalidArgument,
			typ:    problemTypeBase + "body-unreadable",
			title:  "Request body unreadable",
			detail: "The request body could not be read.",
		},
		// The request's own context ended while the engine worked for it:
		// the request's end, not a failure (SPEC §6.1). Its client is
		// usually gone; an outer handler that is not sees why.
		canceled: problem{
			status: 499,
			code:   connect.CodeCanceled,
			typ:    "about:blank",
			title:  "Request canceled",
			detail: "The request ended before its idempotency key was claimed; nothing ran.",
		},
		deadline: problem{
			status: http.StatusGatewayTimeout,
			code:   connect.CodeDeadlineExceeded,
			typ:    "about:blank",
			title:  "Request deadline exceeded",
			detail: "The request's deadline passed before its idempotency key was claimed; nothing ran.",
		},
		internal: problem{
			status: http.StatusInternalServerError,
			code:   connect.CodeInternal,
			typ:    "about:blank",
			title:  http.StatusText(http.StatusInternalServerError),
			detail: "The idempotency middleware met an unexpected error.",
		},
	}
	for _, p := range []*problem{&ps.unreadable, &ps.canceled, &ps.deadline, &ps.internal} {
		p.body = renderProblem(p.typ, p.title, p.status, p.detail)
	}
	ps.inFlight.retryAfter = []string{s.RetryAfterSeconds()}[:1:1]
	return ps
}

func newProblem(sentinel error, name, detail string) problem {
	status, label, title, ok := idempotency.StatusOf(sentinel)
	code, _, codeOK := idempotency.CodeOf(sentinel)
	if !ok || !codeOK {
		panic("httpmw: no status for " + sentinel.Error())
	}
	p := problem{
		status: status,
		code:   code,
		label:  []string{label}[:1:1],
		typ:    problemTypeBase + name,
		title:  title,
		detail: detail,
	}
	if detail != "" {
		p.body = renderProblem(p.typ, title, status, detail)
	}
	return p
}

func renderProblem(typ, title string, status int, detail string) []byte {
	b, err := json.Marshal(problemDoc{Type: typ, Title: title, Status: status, Detail: detail})
	if err != nil {
		panic("httpmw: rendering a problem document: " + err.Error())
	}
	return b
}

// write answers err, one of the library's errors, with its problem
// document.
func (ps *problems) write(w http.ResponseWriter, err error) {
	p := ps.lookup(err)
	body := p.body
	if body == nil {
		body = renderProblem(p.typ, p.title, p.status, ps.detail(p, err))
	}
	h := w.Header()
	h["Content-Type"] = problemContentType
	if p.label != nil {
		h[idempotency.StatusHeader] = p.label
	}
	if p.retryAfter != nil {
		h["Retry-After"] = p.retryAfter
	}
	// A length an outer handler set cannot be this body's.
	delete(h, "Content-Length")
	w.WriteHeader(p.status)
	_, _ = w.Write(body)
}

func (ps *problems) lookup(err error) *problem {
	switch {
	case errors.Is(err, idempotency.ErrInvalidKey):
		return &ps.invalidKey
	case errors.Is(err, idempotency.ErrKeyRequired):
		return &ps.keyRequired
	case errors.Is(err, idempotency.ErrInFlight):
		return &ps.inFlight
	case errors.Is(err, idempotency.ErrFingerprintMismatch):
		return &ps.mismatch
	case errors.Is(err, idempotency.ErrBodyTooLarge):
		return &ps.tooLarge
	case errors.Is(err, idempotency.ErrStoreUnavailable):
		return &ps.unavailable
	case errors.Is(err, errBodyUnreadable):
		return &ps.unreadable
	case errors.Is(err, context.Canceled):
		return &ps.canceled
	case errors.Is(err, context.DeadlineExceeded):
		return &ps.deadline
	default:
		return &ps.internal
	}
}

// detail says what to fix about err, p's error.
func (ps *problems) detail(p *problem, err error) string {
	if p.detail != "" {
		return p.detail
	}
	return ps.invalidKeyDetail(err)
}

// invalidKeyDetail says what is wrong with the key, from the reason the
// key parser gave; the parser never puts the key itself in its errors.
func (ps *problems) invalidKeyDetail(err error) string {
	detail := "The " + ps.keyHeader + " header is invalid"
	reason, ok := strings.CutPrefix(err.Error(), idempotency.ErrInvalidKey.Error()+": ")
	if !ok || reason == "" {
		return detail + "."
	}
	return detail + ": " + reason + "."
}
