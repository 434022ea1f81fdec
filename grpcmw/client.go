package grpcmw

import (
	"context"
	"strings"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/idemkey/idempotency"
)

// client is the state of one [UnaryClientInterceptor].
type client struct {
	policy  *idempotency.RetryPolicy
	methods methods
	keyMD   string
}

// UnaryClientInterceptor returns a grpc-go client interceptor that makes
// mutating unary calls safe to retry (SPEC §10), configured by opts
// ([idempotency.WithMaxRetries], [idempotency.WithBackoff],
// [idempotency.WithIdempotencyHeader], [idempotency.WithProcedureFilter];
// the server options are ignored). It panics if an option cannot work.
// Install it with [grpc.WithChainUnaryInterceptor]; it is safe for
// concurrent use.
//
// On every call it guards (by default, every method whose idempotency
// level is neither NO_SIDE_EFFECTS nor IDEMPOTENT) it sets a fresh version
// 4 UUID as the outgoing metadata idempotency-key, unless the caller set
// one, on a context of its own: the caller's metadata is never changed. The
// key stays the same for every retry of the call.
//
// It retries, with exponential backoff and jitter, when the server's
// library says the key is in flight or its store is unavailable (the
// idempotency-status header or trailer metadata, read through
// [grpc.Header] and [grpc.Trailer] call options of its own; the caller's
// still receive the last attempt's metadata), honouring retry-after up to
// the maximum backoff; and when the connection failed before an answer
// arrived: Unavailable with no header metadata at all. A handler's answer
// is never retried; a handler's Unavailable comes with header metadata
// from a server guarded by [UnaryServerInterceptor], but from a server
// without it, a trailers-only Unavailable cannot be told from a lost
// connection and is retried.
func UnaryClientInterceptor(opts ...idempotency.Option) grpc.UnaryClientInterceptor {
	p := idempotency.NewRetryPolicy(opts...)
	c := &client{policy: p, keyMD: strings.ToLower(p.KeyHeader())}
	return c.intercept
}

func (c *client) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if !c.policy.Guards(method, c.methods.lookup(method).safe) {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	if md, _ := metadata.FromOutgoingContext(ctx); len(md.Get(c.keyMD)) == 0 {
		// A context of its own: the caller's stays as it was, so a second
		// call with it is a new call with a new key.
		ctx = metadata.AppendToOutgoingContext(ctx, c.keyMD, uuid.NewString())
	}
	var header, trailer metadata.MD
	opts = append(opts[:len(opts):len(opts)], grpc.Header(&header), grpc.Trailer(&trailer))
	for attempt := 0; ; attempt++ {
		header, trailer = nil, nil
		err := invoker(ctx, method, req, reply, cc, opts...)
		if err == nil || attempt >= c.policy.MaxRetries() || ctx.Err() != nil {
			return err
		}
		hint, retry := retryable(err, header, trailer)
		if !retry || !c.policy.Wait(ctx, attempt, hint) {
			return err
		}
	}
}

// retryable reports whether a failed call may be sent again with its key,
// and the server's retry-after hint, if any.
func retryable(err error, header, trailer metadata.MD) (hintWait time.Duration, retry bool) {
	statusKey := strings.ToLower(idempotency.StatusHeader)
	retryKey := strings.ToLower(retryAfterHeader)
	for _, md := range []metadata.MD{header, trailer} {
		if label := first(md, statusKey); label != "" {
			return idempotency.RetryHint(label, first(md, retryKey))
		}
	}
	// No header metadata at all: the server never answered.
	return 0, status.Code(err) == codes.Unavailable && header == nil
}

// first returns the first value of key in md, or "".
func first(md metadata.MD, key string) string {
	if vs := md[key]; len(vs) > 0 {
		return vs[0]
	}
	return ""
}
