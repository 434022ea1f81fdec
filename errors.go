package idempotency

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"connectrpc.com/connect"
)

// The errors the library itself raises. Adapters answer them as SPEC'd
// statuses and codes; [StatusOf] and [CodeOf] give the mapping. Each is
// usable with [errors.Is], also when wrapped.
var (
	// ErrKeyRequired: the request has no key and [WithRequireKey] is on.
	// 400 / [connect.CodeInvalidArgument].
	ErrKeyRequired = errors.New("idempotency: an Idempotency-Key header is required")
	// ErrInvalidKey: the key is malformed (an empty quoted string, longer than
	// 255 bytes, control characters, invalid UTF-8, several values, a broken
	// quoted string, or not a v4 UUID under [WithEnforceUUID4]).
	// 422 / [connect.CodeInvalidArgument].
	ErrInvalidKey = errors.New("idempotency: invalid idempotency key")
	// ErrInFlight: another request with the same key is still running.
	// 409 / [connect.CodeAborted], with a Retry-After hint.
	ErrInFlight = errors.New("idempotency: a request with this idempotency key is in flight")
	// ErrFingerprintMismatch: the key was used before with another payload.
	// 422 / [connect.CodeInvalidArgument].
	ErrFingerprintMismatch = errors.New("idempotency: idempotency key reused with a different request payload")
	// ErrBodyTooLarge: the request body is over [WithMaxBodySize]. 413.
	ErrBodyTooLarge = errors.New("idempotency: request body too large")
	// ErrStoreUnavailable: the store failed or returned a record that
	// cannot be decoded. 503 / [connect.CodeUnavailable].
	ErrStoreUnavailable = errors.New("idempotency: idempotency store unavailable")
)

// StatusHeader is the header (HTTP) or error metadata entry (Connect) that
// marks an error the library raised itself, so that clients can tell it
// from the handler's own errors.
const StatusHeader = "Idempotency-Status"

// The values of [StatusHeader].
const (
	StatusInFlight         = "in-flight"
	StatusStoreUnavailable = "store-unavailable"
	StatusMismatch         = "mismatch"
	StatusInvalidKey       = "invalid-key"
	StatusBodyTooLarge     = "body-too-large"
)

// errorInfo says how an adapter answers one of the library's errors.
type errorInfo struct {
	status int
	code   connect.Code
	label  string
	title  string
}

func infoOf(err error) (errorInfo, bool) {
	switch {
	case errors.Is(err, ErrKeyRequired):
		return errorInfo{http.StatusBadRequest, connect.CodeInvalidArgument, StatusInvalidKey, "Idempotency key required"}, true
	case errors.Is(err, ErrInvalidKey):
		return errorInfo{http.StatusUnprocessableEntity, connect.CodeInvalidArgument, StatusInvalidKey, "Invalid idempotency key"}, true
	case errors.Is(err, ErrInFlight):
		return errorInfo{http.StatusConflict, connect.CodeAborted, StatusInFlight, "Request in flight"}, true
	case errors.Is(err, ErrFingerprintMismatch):
		return errorInfo{http.StatusUnprocessableEntity, connect.CodeInvalidArgument, StatusMismatch, "Idempotency key reused"}, true
	case errors.Is(err, ErrBodyTooLarge):
		return errorInfo{http.StatusRequestEntityTooLarge, connect.CodeResourceExhausted, StatusBodyTooLarge, "Request body too large"}, true
	case errors.Is(err, ErrStoreUnavailable):
		return errorInfo{http.StatusServiceUnavailable, connect.CodeUnavailable, StatusStoreUnavailable, "Idempotency store unavailable"}, true
	// The request's own context ended while the engine worked for it: the
	// request's end, not a failure of the library.
	case errors.Is(err, context.Canceled):
		return errorInfo{499, connect.CodeCanceled, "", "Request canceled"}, true
	case errors.Is(err, context.DeadlineExceeded):
		return errorInfo{http.StatusGatewayTimeout, connect.CodeDeadlineExceeded, "", "Request deadline exceeded"}, true
	}
	return errorInfo{}, false
}

// StatusOf returns the HTTP status, the [StatusHeader] value and a short
// title for one of the library's errors, and false for any other error.
func StatusOf(err error) (status int, label, title string, ok bool) {
	info, ok := infoOf(err)
	return info.status, info.label, info.title, ok
}

// CodeOf returns the Connect code and the [StatusHeader] value for one of
// the library's errors, and false for any other error.
func CodeOf(err error) (code connect.Code, label string, ok bool) {
	info, ok := infoOf(err)
	return info.code, info.label, ok
}

// ErrorMessage is what the RPC adapters tell a client about one of the
// library's errors: what happened and what to fix, in the engine's terms
// (its key header, its UUID setting, its Retry-After hint), never the
// error's causes, which may describe the store's internals. httpmw says
// the same in its problem documents.
func (e *Engine) ErrorMessage(err error) string {
	c := e.cfg
	switch {
	case errors.Is(err, ErrKeyRequired):
		return "this procedure requires an " + c.keyHeader + " header: send a unique key, such as a random UUID, and reuse it only to retry the same request"
	case errors.Is(err, ErrInvalidKey):
		reason := strings.TrimPrefix(err.Error(), ErrInvalidKey.Error()+": ")
		if c.enforceUUID4 {
			return "invalid " + c.keyHeader + " header: " + reason + "; send a random v4 UUID"
		}
		return "invalid " + c.keyHeader + " header: " + reason + "; send one value of 1 to 255 bytes without control characters"
	case errors.Is(err, ErrInFlight):
		return "a request with this idempotency key is still in progress: retry after " + e.retryAfter + " s with the same key to get its result"
	case errors.Is(err, ErrFingerprintMismatch):
		return "this idempotency key was already used for a different request: send a new key for a new request, or the same request to retry"
	case errors.Is(err, ErrStoreUnavailable):
		return "the idempotency store is unavailable: retry later with the same key"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err.Error()
	default:
		return "idempotency: internal error"
	}
}
