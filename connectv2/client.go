package connectv2

import (
	"context"
	"errors"
	"io"
	"slices"
	"sync"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	idempotency "github.com/idemkey/idempotency"
)

// NewClientInterceptor returns a connect-go v2 client interceptor that makes
// a client's mutating unary calls safe to retry, as
// [idempotency.NewClientInterceptor] does for v1. Pass it to
// [connect.NewClient]. It panics if an option cannot work. It is safe for
// concurrent use.
//
// On every unary call it guards (by default, every procedure whose
// idempotency level is neither NO_SIDE_EFFECTS nor IDEMPOTENT; see
// [idempotency.WithProcedureFilter]) it sends the key of the call's
// [connect.CallInfo] request headers, or a fresh version 4 UUID when the
// caller set none, and keeps that key for every retry of the call. The key
// it makes is never written into the caller's call info: a call info reused
// for a second call gets a new key for that call.
//
// It retries, with exponential backoff and jitter, when the server's
// idempotency library says the key is in flight or its store is unavailable
// ([idempotency.StatusHeader] in the response headers or trailers, where v1
// and v2 servers put it), and when no answer came from the server (an error
// that connect-go does not mark as remote, other than the call's context
// ending). It never retries an answer the handler gave. A Retry-After hint
// is honoured up to the maximum backoff; [idempotency.WithMaxRetries] and
// [idempotency.WithBackoff] set the budget, and the call's context bounds
// everything.
//
// A client interceptor only opens the stream, so for a guarded call it
// returns a stream of its own: Send keeps the request, and the first Receive
// sends it, once per attempt, each attempt with a call info of its own. The
// caller's call info then gets the final attempt's response headers,
// trailers and transport fields, as without the interceptor.
func NewClientInterceptor(opts ...idempotency.Option) connect.ClientInterceptor {
	p := idempotency.NewRetryPolicy(opts...)
	return func(next connect.ClientFunc) connect.ClientFunc {
		return func(ctx context.Context, spec connect.Spec) (connect.ClientStream, error) {
			if spec.StreamType != connect.StreamTypeUnary || !p.Guards(spec.Procedure, safe(spec.IdempotencyLevel)) {
				return next(ctx, spec)
			}
			return &retryStream{ctx: ctx, spec: spec, next: next, policy: p}, nil
		}
	}
}

// retryStream is the stream of a guarded unary call: it sends the request
// when the response is asked for, as many times as the policy allows.
type retryStream struct {
	// ctx is the call's context: a stream is bound to it when it opens.
	ctx    context.Context
	spec   connect.Spec
	next   connect.ClientFunc
	policy *idempotency.RetryPolicy

	mu      sync.Mutex
	req     any
	sent    bool
	done    bool
	current connect.ClientStream // the attempt in progress, for Close
	closed  bool
}

// SendHeaders does nothing: the headers go with each attempt.
func (s *retryStream) SendHeaders() error { return nil }

// Send keeps the request for the attempts.
func (s *retryStream) Send(msg any) error {
	if s.sent {
		return errors.New("connectv2: unary stream sent more than once")
	}
	s.sent = true
	s.req = msg
	return nil
}

// CloseSend does nothing: each attempt closes its own send side.
func (s *retryStream) CloseSend() error { return nil }

// Close abandons the call: the attempt in progress, if any, is closed.
func (s *retryStream) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.current != nil {
		return s.current.Close()
	}
	return nil
}

// Receive sends the request, and again while the answer says to retry,
// then reads the final answer into dst.
func (s *retryStream) Receive(dst any) error {
	if s.done {
		return io.EOF
	}
	s.done = true
	if !s.sent {
		return connect.NewError(connect.CodeInternal, "connectv2: unary stream received before it sent a request")
	}
	caller, _ := connect.CallInfoForClientContext(s.ctx)
	key := ""
	if caller != nil {
		key = caller.RequestHeader().Get(s.policy.KeyHeader())
	}
	if key == "" {
		key = uuid.NewString()
	}
	for attempt := 0; ; attempt++ {
		info, err := s.attempt(caller, key, dst)
		if err == nil || attempt >= s.policy.MaxRetries() || s.ctx.Err() != nil {
			finish(caller, info)
			return err
		}
		hint, retry := retryable(info, err)
		if !retry || !s.policy.Wait(s.ctx, attempt, hint) {
			finish(caller, info)
			return err
		}
		if m, ok := dst.(proto.Message); ok {
			proto.Reset(m)
		}
	}
}

// attempt sends the request once, with a call info of its own that has the
// caller's request headers and the key.
func (s *retryStream) attempt(caller *connect.CallInfo, key string, dst any) (*connect.CallInfo, error) {
	ctx, info := connect.NewClientContext(s.ctx)
	if caller != nil {
		for k, vs := range caller.RequestHeader().All() {
			info.RequestHeader().SetValues(k, slices.Clone(vs))
		}
	}
	info.RequestHeader().Set(s.policy.KeyHeader(), key)
	stream, err := s.next(ctx, s.spec)
	if err != nil {
		return info, err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = stream.Close()
		return info, connect.NewError(connect.CodeCanceled, "connectv2: stream closed")
	}
	s.current = stream
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.current = nil
		s.mu.Unlock()
		_ = stream.Close()
	}()
	if err := stream.Send(s.req); err != nil && !errors.Is(err, io.EOF) {
		return info, err
	}
	if err := stream.CloseSend(); err != nil {
		return info, err
	}
	return info, stream.Receive(dst)
}

// finish gives the caller's call info what the final attempt got.
func finish(caller, info *connect.CallInfo) {
	if caller == nil || info == nil {
		return
	}
	caller.Spec = info.Spec
	caller.PeerAddr = info.PeerAddr
	caller.Protocol = info.Protocol
	caller.Codec = info.Codec
	caller.RequestEncoding = info.RequestEncoding
	caller.ResponseEncoding = info.ResponseEncoding
	caller.SendStats = info.SendStats
	caller.ReceiveStats = info.ReceiveStats
	caller.TransportInfo = info.TransportInfo
	for k, vs := range info.ResponseHeader().All() {
		caller.ResponseHeader().SetValues(k, vs)
	}
	for k, vs := range info.ResponseTrailer().All() {
		caller.ResponseTrailer().SetValues(k, vs)
	}
}

// retryable reports whether a failed attempt may be sent again with its
// key, and the server's Retry-After hint, if any.
func retryable(info *connect.CallInfo, err error) (hint time.Duration, retry bool) {
	ce, ok := errors.AsType[*connect.Error](err)
	if !ok || ce == nil || !ce.IsRemote() {
		// No answer came from the server: it either never saw the call or
		// stored what it did.
		return 0, !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
	}
	for _, h := range []*connect.Header{info.ResponseHeader(), info.ResponseTrailer()} {
		if status := h.Get(idempotency.StatusHeader); status != "" {
			return idempotency.RetryHint(status, h.Get("Retry-After"))
		}
	}
	return 0, false
}
