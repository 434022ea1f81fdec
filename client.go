package idempotency

import (
	"context"
	"errors"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
)

// A ClientInterceptor makes a Connect client's mutating unary calls safe to
// retry. On every unary call it guards (by default, every procedure whose
// idempotency level is neither NO_SIDE_EFFECTS nor IDEMPOTENT; see
// [WithProcedures]) it sets a fresh version 4 UUID as the key unless the
// caller set one, and keeps that key for every retry of the call.
//
// It retries, with exponential backoff and jitter, when the server's
// idempotency library says the key is in flight or its store is
// unavailable (the [StatusHeader] metadata), and when the transport failed
// before an answer arrived (an error that is not a wire error). It never
// retries an answer the handler gave. A Retry-After hint is honoured up to
// the maximum backoff. [WithMaxRetries] and [WithBackoff] set the budget;
// the call's context bounds everything. It is safe for concurrent use.
type ClientInterceptor struct {
	cfg *config
}

var _ connect.Interceptor = (*ClientInterceptor)(nil)

// NewClientInterceptor returns a client interceptor. It panics if an option
// cannot work.
func NewClientInterceptor(opts ...Option) *ClientInterceptor {
	return &ClientInterceptor{cfg: newConfig(opts)}
}

// WrapUnary implements [connect.Interceptor].
func (c *ClientInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if !req.Spec().IsClient || !guards(c.cfg, req.Spec()) {
			return next(ctx, req)
		}
		if req.Header().Get(c.cfg.keyHeader) == "" {
			// The key goes on a copy of the request's headers: the caller's
			// request stays as it was, so sending it again is a new call
			// with a new key.
			keyed := &keyedRequest{AnyRequest: req, header: req.Header().Clone()}
			keyed.header.Set(c.cfg.keyHeader, uuid.NewString())
			req = keyed
		}
		for attempt := 0; ; attempt++ {
			resp, err := next(ctx, req)
			if err == nil || attempt >= c.cfg.maxRetries || ctx.Err() != nil {
				return resp, err
			}
			hint, retry := retryable(err)
			if !retry {
				return resp, err
			}
			if !sleep(ctx, c.cfg.backoff(attempt, hint)) {
				return resp, err
			}
		}
	}
}

// keyedRequest is a request with headers of its own. Embedding the
// caller's request gives it connect's unexported methods, so connect sends
// it as it would the caller's, with these headers.
type keyedRequest struct {
	connect.AnyRequest
	header http.Header
}

// Header returns the request's own headers.
func (r *keyedRequest) Header() http.Header { return r.header }

// WrapStreamingClient passes streams through: only unary calls are guarded.
func (c *ClientInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler passes streams through: this is a client interceptor.
func (c *ClientInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// retryable reports whether a failed call may be sent again with its key,
// and the server's Retry-After hint, if any.
func retryable(err error) (time.Duration, bool) {
	var cerr *connect.Error
	if !errors.As(err, &cerr) {
		return 0, true
	}
	if !connect.IsWireError(cerr) {
		// The call failed on this side or on the way: no handler's answer
		// arrived, so the server either never saw it or stored what it did.
		return 0, !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
	}
	return RetryHint(cerr.Meta().Get(StatusHeader), cerr.Meta().Get("Retry-After"))
}
