package idempotency_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/idemkey/idempotency"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1/paymentsv1connect"
	"github.com/idemkey/idempotency/store/memory"
)

// paymentServer is a pluggable PaymentService: each RPC runs its function
// field and counts its runs. An RPC without a function answers
// CodeUnimplemented.
type paymentServer struct {
	paymentsv1connect.UnimplementedPaymentServiceHandler

	charge    func(context.Context, *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error)
	getCharge func(context.Context, *connect.Request[paymentsv1.GetChargeRequest]) (*connect.Response[paymentsv1.GetChargeResponse], error)
	refund    func(context.Context, *connect.Request[paymentsv1.RefundRequest]) (*connect.Response[paymentsv1.RefundResponse], error)
	watch     func(context.Context, *connect.Request[paymentsv1.WatchChargesRequest], *connect.ServerStream[paymentsv1.WatchChargesResponse]) error

	chargeRuns, getChargeRuns, refundRuns, watchRuns atomic.Int64
}

func (s *paymentServer) Charge(ctx context.Context, req *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
	s.chargeRuns.Add(1)
	if s.charge == nil {
		return s.UnimplementedPaymentServiceHandler.Charge(ctx, req)
	}
	return s.charge(ctx, req)
}

func (s *paymentServer) GetCharge(ctx context.Context, req *connect.Request[paymentsv1.GetChargeRequest]) (*connect.Response[paymentsv1.GetChargeResponse], error) {
	s.getChargeRuns.Add(1)
	if s.getCharge == nil {
		return s.UnimplementedPaymentServiceHandler.GetCharge(ctx, req)
	}
	return s.getCharge(ctx, req)
}

func (s *paymentServer) Refund(ctx context.Context, req *connect.Request[paymentsv1.RefundRequest]) (*connect.Response[paymentsv1.RefundResponse], error) {
	s.refundRuns.Add(1)
	if s.refund == nil {
		return s.UnimplementedPaymentServiceHandler.Refund(ctx, req)
	}
	return s.refund(ctx, req)
}

func (s *paymentServer) WatchCharges(ctx context.Context, req *connect.Request[paymentsv1.WatchChargesRequest], stream *connect.ServerStream[paymentsv1.WatchChargesResponse]) error {
	s.watchRuns.Add(1)
	if s.watch == nil {
		return s.UnimplementedPaymentServiceHandler.WatchCharges(ctx, req, stream)
	}
	return s.watch(ctx, req, stream)
}

// startServer serves svc over HTTP/1.1 and HTTP/2 with TLS, behind the
// handler options (the interceptor among them), and returns a function that
// makes clients for it.
func startServer(t *testing.T, svc *paymentServer, opts ...connect.HandlerOption) func(...connect.ClientOption) paymentsv1connect.PaymentServiceClient {
	t.Helper()
	srv := serve(t, svc, opts...)
	return func(copts ...connect.ClientOption) paymentsv1connect.PaymentServiceClient {
		return paymentsv1connect.NewPaymentServiceClient(srv.Client(), srv.URL, copts...)
	}
}

// serve starts the test server itself.
func serve(t *testing.T, svc *paymentServer, opts ...connect.HandlerOption) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(paymentsv1connect.NewPaymentServiceHandler(svc, opts...))
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// guarded starts a server with the interceptor over store. It logs nowhere
// unless opts set a logger.
func guarded(t *testing.T, svc *paymentServer, store idempotency.Store, opts ...idempotency.Option) func(...connect.ClientOption) paymentsv1connect.PaymentServiceClient {
	t.Helper()
	opts = append([]idempotency.Option{quiet}, opts...)
	return startServer(t, svc, connect.WithInterceptors(idempotency.NewInterceptor(store, opts...)))
}

var quiet = idempotency.WithLogger(slog.New(slog.DiscardHandler))

// logSink collects what the library logs.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func (s *logSink) option() idempotency.Option {
	return idempotency.WithLogger(slog.New(slog.NewTextHandler(s, nil)))
}

var protocols = []struct {
	name string
	opts []connect.ClientOption
}{
	{name: "connect+json", opts: []connect.ClientOption{connect.WithProtoJSON()}},
	{name: "connect+proto"},
	{name: "grpc", opts: []connect.ClientOption{connect.WithGRPC()}},
	{name: "grpc-web", opts: []connect.ClientOption{connect.WithGRPCWeb()}},
}

// countingStore counts the calls that reach a store and can replace its
// answers, to play a failing or corrupt store.
type countingStore struct {
	idempotency.Store

	calls    atomic.Int64
	claim    func(ctx context.Context, key, token string, lease time.Duration) (idempotency.ClaimResult, error)
	released chan struct{} // receives after each Release, if not nil
}

func newCountingStore(t *testing.T) *countingStore {
	t.Helper()
	return &countingStore{Store: memory.New()}
}

func (s *countingStore) Claim(ctx context.Context, key, token string, lease time.Duration) (idempotency.ClaimResult, error) {
	s.calls.Add(1)
	if s.claim != nil {
		return s.claim(ctx, key, token, lease)
	}
	return s.Store.Claim(ctx, key, token, lease)
}

func (s *countingStore) Complete(ctx context.Context, key, token string, record []byte, expiry time.Duration) error {
	s.calls.Add(1)
	return s.Store.Complete(ctx, key, token, record, expiry)
}

func (s *countingStore) Release(ctx context.Context, key, token string) error {
	s.calls.Add(1)
	err := s.Store.Release(ctx, key, token)
	if s.released != nil {
		s.released <- struct{}{}
	}
	return err
}

func (s *countingStore) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	s.calls.Add(1)
	return s.Store.Renew(ctx, key, token, lease)
}

var errStoreDown = errors.New("store is down")

func failingClaim(context.Context, string, string, time.Duration) (idempotency.ClaimResult, error) {
	return idempotency.ClaimResult{}, errStoreDown
}

// chargeHandler answers a charge with a fresh ID on each run, sets a header
// and a trailer on the response and another of each through the call info.
func chargeHandler(ctx context.Context, req *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
	id := "ch_" + strconv.FormatInt(chargeIDs.Add(1), 10)
	if info, ok := connect.CallInfoForHandlerContext(ctx); ok {
		info.ResponseHeader().Set("X-Call-Header", "header-"+id)
		info.ResponseTrailer().Set("X-Call-Trailer", "trailer-"+id)
	}
	res := connect.NewResponse(&paymentsv1.ChargeResponse{
		ChargeId:    id,
		Status:      "succeeded",
		AmountCents: req.Msg.GetAmountCents(),
		CreatedAt:   timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)),
	})
	res.Header().Set("X-Charge-Id", id)
	res.Header().Add("X-Multi", "one")
	res.Header().Add("X-Multi", "two")
	res.Trailer().Set("X-Charge-Trailer", id)
	return res, nil
}

var chargeIDs atomic.Int64

func chargeRequest(key string) *connect.Request[paymentsv1.ChargeRequest] {
	req := connect.NewRequest(&paymentsv1.ChargeRequest{
		AccountId:   "acct_1",
		AmountCents: 1250,
		Currency:    "EUR",
		Metadata: map[string]string{
			"order": "o-1", "customer": "c-9", "channel": "web", "campaign": "spring", "note": "gift",
			"region": "eu", "shipping": "express", "coupon": "none",
		},
	})
	if key != "" {
		req.Header().Set(idempotency.DefaultIdempotencyHeader, key)
	}
	return req
}

func TestInterceptorReplaysResponse(t *testing.T) {
	t.Parallel()
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			svc := &paymentServer{charge: chargeHandler}
			client := guarded(t, svc, memory.New())(p.opts...)

			first, err := client.Charge(t.Context(), chargeRequest("key-"+p.name))
			require.NoError(t, err)
			retry, err := client.Charge(t.Context(), chargeRequest("key-"+p.name))
			require.NoError(t, err)

			assert.Equal(t, int64(1), svc.chargeRuns.Load(), "handler runs")
			assert.True(t, proto.Equal(first.Msg, retry.Msg), "messages differ: %v and %v", first.Msg, retry.Msg)
			assert.Equal(t, "succeeded", retry.Msg.GetStatus())
			assert.Empty(t, first.Header().Values(idempotency.DefaultReplayHeader), "first answer marked as a replay")
			assert.Equal(t, []string{"true"}, retry.Header().Values(idempotency.DefaultReplayHeader))
			for _, h := range []string{"X-Charge-Id", "X-Call-Header", "X-Multi"} {
				assert.NotEmpty(t, first.Header().Values(h), "header %s", h)
				assert.Equal(t, first.Header().Values(h), retry.Header().Values(h), "header %s", h)
			}
			for _, h := range []string{"X-Charge-Trailer", "X-Call-Trailer"} {
				assert.NotEmpty(t, first.Trailer().Values(h), "trailer %s", h)
				assert.Equal(t, first.Trailer().Values(h), retry.Trailer().Values(h), "trailer %s", h)
			}
		})
	}
}

func TestInterceptorEncodingsAreOneRequest(t *testing.T) {
	t.Parallel()
	svc := &paymentServer{charge: chargeHandler}
	newClient := guarded(t, svc, memory.New())

	// The JSON encoding comes first: it is the one whose bytes differ most
	// from the deterministic binary form that the fingerprint hashes.
	var first *paymentsv1.ChargeResponse
	for i, p := range protocols {
		res, err := newClient(p.opts...).Charge(t.Context(), chargeRequest("one-request"))
		require.NoError(t, err, p.name)
		if i == 0 {
			first = res.Msg
			assert.Empty(t, res.Header().Get(idempotency.DefaultReplayHeader), p.name)
			continue
		}
		assert.Equal(t, "true", res.Header().Get(idempotency.DefaultReplayHeader), p.name)
		assert.True(t, proto.Equal(first, res.Msg), p.name)
	}
	assert.Equal(t, int64(1), svc.chargeRuns.Load(), "handler runs")
}

func TestInterceptorReplaysErrors(t *testing.T) {
	t.Parallel()
	detail, err := connect.NewErrorDetail(wrapperspb.String("insufficient funds on acct_1"))
	require.NoError(t, err)
	tests := []struct {
		name        string
		err         func() error
		wantCode    connect.Code
		wantMessage string
		wantDetails bool
		wantMeta    string
	}{
		{
			name: "connect error",
			err: func() error {
				e := connect.NewError(connect.CodeFailedPrecondition, errors.New("insufficient funds"))
				e.AddDetail(detail)
				e.Meta().Set("X-Decline-Reason", "funds")
				return e
			},
			wantCode:    connect.CodeFailedPrecondition,
			wantMessage: "insufficient funds",
			wantDetails: true,
			wantMeta:    "funds",
		},
		{
			name: "wrapped connect error",
			err: func() error {
				return errors.Join(errors.New("ledger"), connect.NewError(connect.CodeNotFound, errors.New("no account")))
			},
			wantCode:    connect.CodeNotFound,
			wantMessage: "no account",
		},
		{
			name: "error from another server",
			err: func() error {
				e := connect.NewWireError(connect.CodeNotFound, errors.New("upstream has no account"))
				e.Meta().Set("X-Decline-Reason", "upstream")
				return e
			},
			wantCode:    connect.CodeNotFound,
			wantMessage: "upstream has no account",
		},
		{
			name:        "deadline of the handler's own call",
			err:         func() error { return fmt.Errorf("ledger: %w", context.DeadlineExceeded) },
			wantCode:    connect.CodeDeadlineExceeded,
			wantMessage: "ledger: context deadline exceeded",
		},
		{
			name:        "plain error",
			err:         func() error { return errors.New("ledger exploded") },
			wantCode:    connect.CodeUnknown,
			wantMessage: "ledger exploded",
		},
	}
	for _, tt := range tests {
		for _, p := range protocols {
			t.Run(tt.name+"/"+p.name, func(t *testing.T) {
				t.Parallel()
				svc := &paymentServer{charge: func(context.Context, *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
					return nil, tt.err()
				}}
				client := guarded(t, svc, memory.New())(p.opts...)

				_, err := client.Charge(t.Context(), chargeRequest("key"))
				first := asConnectError(t, err)
				_, err = client.Charge(t.Context(), chargeRequest("key"))
				retry := asConnectError(t, err)

				assert.Equal(t, int64(1), svc.chargeRuns.Load(), "handler runs")
				for _, e := range []*connect.Error{first, retry} {
					assert.Equal(t, tt.wantCode, e.Code())
					assert.Equal(t, tt.wantMessage, e.Message())
					assert.Empty(t, e.Meta().Get(idempotency.StatusHeader), "a handler's error is marked as the library's")
				}
				assert.Empty(t, first.Meta().Get(idempotency.DefaultReplayHeader))
				assert.Equal(t, "true", retry.Meta().Get(idempotency.DefaultReplayHeader))
				assert.Equal(t, tt.wantMeta, first.Meta().Get("X-Decline-Reason"))
				assert.Equal(t, tt.wantMeta, retry.Meta().Get("X-Decline-Reason"))
				require.Len(t, retry.Details(), len(first.Details()))
				if tt.wantDetails {
					require.Len(t, retry.Details(), 1)
					got, err := retry.Details()[0].Value()
					require.NoError(t, err)
					assert.True(t, proto.Equal(wrapperspb.String("insufficient funds on acct_1"), got), "detail %v", got)
					assert.Equal(t, first.Details()[0].Type(), retry.Details()[0].Type())
				}
			})
		}
	}
}

func asConnectError(t *testing.T, err error) *connect.Error {
	t.Helper()
	var ce *connect.Error
	require.ErrorAs(t, err, &ce)
	return ce
}

func TestInterceptorConcurrentDuplicates(t *testing.T) {
	t.Parallel()
	const duplicates = 24
	started := make(chan struct{})
	release := make(chan struct{})
	svc := &paymentServer{charge: func(ctx context.Context, req *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
		close(started)
		<-release
		return chargeHandler(ctx, req)
	}}
	client := guarded(t, svc, memory.New())(connect.WithGRPC())

	type result struct {
		res *connect.Response[paymentsv1.ChargeResponse]
		err error
	}
	results := make(chan result, duplicates)
	for range duplicates {
		go func() {
			res, err := client.Charge(t.Context(), chargeRequest("dup"))
			results <- result{res, err}
		}()
	}
	// Every duplicate but the one that runs the handler is answered while
	// the handler is blocked.
	timeout := time.After(30 * time.Second)
	for range duplicates - 1 {
		select {
		case r := <-results:
			require.Error(t, r.err)
			e := asConnectError(t, r.err)
			assert.Equal(t, connect.CodeAborted, e.Code())
			assert.Equal(t, "1", e.Meta().Get("Retry-After"))
			assert.Equal(t, idempotency.StatusInFlight, e.Meta().Get(idempotency.StatusHeader))
			assert.Contains(t, e.Message(), "in progress")
		case <-timeout:
			t.Fatal("duplicates not answered while the first runs")
		}
	}
	select {
	case <-started:
	case <-timeout:
		t.Fatal("handler never started")
	}
	close(release)
	select {
	case r := <-results:
		require.NoError(t, r.err)
		assert.Equal(t, "succeeded", r.res.Msg.GetStatus())
	case <-timeout:
		t.Fatal("first request never answered")
	}
	assert.Equal(t, int64(1), svc.chargeRuns.Load(), "handler runs")

	res, err := client.Charge(t.Context(), chargeRequest("dup"))
	require.NoError(t, err)
	assert.Equal(t, "true", res.Header().Get(idempotency.DefaultReplayHeader))
}

func TestInterceptorRetryAfter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		retryAfter time.Duration
		want       string
	}{
		{name: "sub-second rounds up to one", retryAfter: 200 * time.Millisecond, want: "1"},
		{name: "fraction rounds up", retryAfter: 2100 * time.Millisecond, want: "3"},
		{name: "whole seconds", retryAfter: 5 * time.Second, want: "5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			store := newCountingStore(t)
			store.claim = func(context.Context, string, string, time.Duration) (idempotency.ClaimResult, error) {
				return idempotency.ClaimResult{State: idempotency.StateInFlight, LeaseLeft: time.Minute}, nil
			}
			svc := &paymentServer{charge: chargeHandler}
			client := guarded(t, svc, store, idempotency.WithRetryAfter(tt.retryAfter))()
			_, err := client.Charge(t.Context(), chargeRequest("key"))
			e := asConnectError(t, err)
			assert.Equal(t, connect.CodeAborted, e.Code())
			assert.Equal(t, tt.want, e.Meta().Get("Retry-After"))
			assert.Zero(t, svc.chargeRuns.Load())
		})
	}
}

// TestInterceptorLibraryErrors covers each row of the error table of SPEC §7
// that the interceptor answers; the in-flight row is
// TestInterceptorConcurrentDuplicates.
func TestInterceptorLibraryErrors(t *testing.T) {
	t.Parallel()
	const v1UUID = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
	tests := []struct {
		name        string
		opts        []idempotency.Option
		failStore   bool
		header      []string // key header values; nil sends none
		before      *paymentsv1.ChargeRequest
		wantCode    connect.Code
		wantStatus  string
		wantMessage string
		wantIs      error
	}{
		{
			name:        "key required",
			opts:        []idempotency.Option{idempotency.WithRequireKey(true)},
			wantCode:    connect.CodeInvalidArgument,
			wantStatus:  idempotency.StatusInvalidKey,
			wantMessage: "requires an Idempotency-Key header",
		},
		{
			name:        "key required, empty",
			opts:        []idempotency.Option{idempotency.WithRequireKey(true)},
			header:      []string{"  "},
			wantCode:    connect.CodeInvalidArgument,
			wantStatus:  idempotency.StatusInvalidKey,
			wantMessage: "requires an Idempotency-Key header",
		},
		{
			name:        "key too long",
			header:      []string{strings.Repeat("k", 256)},
			wantCode:    connect.CodeInvalidArgument,
			wantStatus:  idempotency.StatusInvalidKey,
			wantMessage: "longer than 255 bytes",
		},
		{
			name:        "tab in key",
			header:      []string{"ab\tcd"},
			wantCode:    connect.CodeInvalidArgument,
			wantStatus:  idempotency.StatusInvalidKey,
			wantMessage: "control character",
		},
		{
			name:        "unicode control character in key",
			header:      []string{"ab\u0085cd"},
			wantCode:    connect.CodeInvalidArgument,
			wantStatus:  idempotency.StatusInvalidKey,
			wantMessage: "control character",
		},
		{
			name:        "two key values",
			header:      []string{"a", "b"},
			wantCode:    connect.CodeInvalidArgument,
			wantStatus:  idempotency.StatusInvalidKey,
			wantMessage: "more than once",
		},
		{
			name:        "v1 UUID under WithEnforceUUID4",
			opts:        []idempotency.Option{idempotency.WithEnforceUUID4(true)},
			header:      []string{v1UUID},
			wantCode:    connect.CodeInvalidArgument,
			wantStatus:  idempotency.StatusInvalidKey,
			wantMessage: "v4 UUID",
		},
		{
			name:        "not a UUID under WithEnforceUUID4",
			opts:        []idempotency.Option{idempotency.WithEnforceUUID4(true)},
			header:      []string{"order-17"},
			wantCode:    connect.CodeInvalidArgument,
			wantStatus:  idempotency.StatusInvalidKey,
			wantMessage: "v4 UUID",
		},
		{
			name:        "payload mismatch",
			header:      []string{"reused"},
			before:      &paymentsv1.ChargeRequest{AccountId: "acct_1", AmountCents: 1},
			wantCode:    connect.CodeInvalidArgument,
			wantStatus:  idempotency.StatusMismatch,
			wantMessage: "different request",
		},
		{
			name:        "store unavailable",
			failStore:   true,
			header:      []string{"key"},
			wantCode:    connect.CodeUnavailable,
			wantStatus:  idempotency.StatusStoreUnavailable,
			wantMessage: "store is unavailable",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			store := newCountingStore(t)
			svc := &paymentServer{charge: chargeHandler}
			client := guarded(t, svc, store, tt.opts...)()
			if tt.before != nil {
				req := connect.NewRequest(tt.before)
				req.Header().Set(idempotency.DefaultIdempotencyHeader, tt.header[0])
				_, err := client.Charge(t.Context(), req)
				require.NoError(t, err)
			}
			if tt.failStore {
				store.claim = failingClaim
			}
			runs := svc.chargeRuns.Load()

			req := chargeRequest("")
			for _, v := range tt.header {
				req.Header().Add(idempotency.DefaultIdempotencyHeader, v)
			}
			_, err := client.Charge(t.Context(), req)

			e := asConnectError(t, err)
			assert.Equal(t, tt.wantCode, e.Code())
			assert.Equal(t, tt.wantStatus, e.Meta().Get(idempotency.StatusHeader))
			assert.Contains(t, e.Message(), tt.wantMessage)
			assert.NotContains(t, e.Message(), errStoreDown.Error(), "store internals shown to the client")
			assert.Equal(t, runs, svc.chargeRuns.Load(), "the handler ran")
		})
	}
}

func TestInterceptorFailOpen(t *testing.T) {
	t.Parallel()
	store := newCountingStore(t)
	store.claim = failingClaim
	svc := &paymentServer{charge: chargeHandler}
	var logs logSink
	client := guarded(t, svc, store, idempotency.WithFailOpen(true), logs.option())()

	for range 2 {
		res, err := client.Charge(t.Context(), chargeRequest("key"))
		require.NoError(t, err)
		assert.Empty(t, res.Header().Get(idempotency.DefaultReplayHeader))
	}
	assert.Equal(t, int64(2), svc.chargeRuns.Load(), "an unprotected request is not replayed")
	assert.Contains(t, logs.String(), "running the handler unprotected")
}

func TestInterceptorPassesThrough(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		call     func(context.Context, paymentsv1connect.PaymentServiceClient) error
		wantRuns func(*paymentServer) int64
	}{
		{
			name: "no side effects",
			call: func(ctx context.Context, client paymentsv1connect.PaymentServiceClient) error {
				req := connect.NewRequest(&paymentsv1.GetChargeRequest{ChargeId: "ch_1"})
				req.Header().Set(idempotency.DefaultIdempotencyHeader, "get")
				_, err := client.GetCharge(ctx, req)
				return err
			},
			wantRuns: func(s *paymentServer) int64 { return s.getChargeRuns.Load() },
		},
		{
			name: "idempotent",
			call: func(ctx context.Context, client paymentsv1connect.PaymentServiceClient) error {
				req := connect.NewRequest(&paymentsv1.RefundRequest{ChargeId: "ch_1"})
				req.Header().Set(idempotency.DefaultIdempotencyHeader, "refund")
				_, err := client.Refund(ctx, req)
				return err
			},
			wantRuns: func(s *paymentServer) int64 { return s.refundRuns.Load() },
		},
		{
			name: "server stream",
			call: func(ctx context.Context, client paymentsv1connect.PaymentServiceClient) error {
				req := connect.NewRequest(&paymentsv1.WatchChargesRequest{AccountId: "acct_1"})
				req.Header().Set(idempotency.DefaultIdempotencyHeader, "watch")
				stream, err := client.WatchCharges(ctx, req)
				if err != nil {
					return err
				}
				for stream.Receive() {
				}
				return errors.Join(stream.Err(), stream.Close())
			},
			wantRuns: func(s *paymentServer) int64 { return s.watchRuns.Load() },
		},
		{
			name: "guarded procedure without a key",
			call: func(ctx context.Context, client paymentsv1connect.PaymentServiceClient) error {
				_, err := client.Charge(ctx, chargeRequest(""))
				return err
			},
			wantRuns: func(s *paymentServer) int64 { return s.chargeRuns.Load() },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			svc := &paymentServer{
				charge: chargeHandler,
				getCharge: func(context.Context, *connect.Request[paymentsv1.GetChargeRequest]) (*connect.Response[paymentsv1.GetChargeResponse], error) {
					return connect.NewResponse(&paymentsv1.GetChargeResponse{Charge: &paymentsv1.ChargeResponse{ChargeId: "ch_1"}}), nil
				},
				refund: func(context.Context, *connect.Request[paymentsv1.RefundRequest]) (*connect.Response[paymentsv1.RefundResponse], error) {
					return connect.NewResponse(&paymentsv1.RefundResponse{Status: "refunded"}), nil
				},
				watch: func(_ context.Context, _ *connect.Request[paymentsv1.WatchChargesRequest], stream *connect.ServerStream[paymentsv1.WatchChargesResponse]) error {
					return stream.Send(&paymentsv1.WatchChargesResponse{Charge: &paymentsv1.ChargeResponse{ChargeId: "ch_1"}})
				},
			}
			store := newCountingStore(t)
			interceptor := idempotency.NewInterceptor(store)
			// The interceptor on the client passes through as well.
			client := startServer(t, svc, connect.WithInterceptors(interceptor))(connect.WithInterceptors(interceptor))

			require.NoError(t, tt.call(t.Context(), client))
			require.NoError(t, tt.call(t.Context(), client))
			assert.Equal(t, int64(2), tt.wantRuns(svc), "handler runs")
			assert.Zero(t, store.calls.Load(), "store calls")
		})
	}
}

func TestInterceptorWithProcedures(t *testing.T) {
	t.Parallel()
	svc := &paymentServer{
		charge: chargeHandler,
		getCharge: func(context.Context, *connect.Request[paymentsv1.GetChargeRequest]) (*connect.Response[paymentsv1.GetChargeResponse], error) {
			return connect.NewResponse(&paymentsv1.GetChargeResponse{Charge: &paymentsv1.ChargeResponse{ChargeId: "ch_" + strconv.FormatInt(chargeIDs.Add(1), 10)}}), nil
		},
	}
	client := guarded(t, svc, memory.New(), idempotency.WithProcedures(func(s connect.Spec) bool {
		return s.Procedure == paymentsv1connect.PaymentServiceGetChargeProcedure
	}))()

	var got []*paymentsv1.GetChargeResponse
	var replayed []string
	for range 2 {
		req := connect.NewRequest(&paymentsv1.GetChargeRequest{ChargeId: "ch_1"})
		req.Header().Set(idempotency.DefaultIdempotencyHeader, "get")
		res, err := client.GetCharge(t.Context(), req)
		require.NoError(t, err)
		got = append(got, res.Msg)
		replayed = append(replayed, res.Header().Get(idempotency.DefaultReplayHeader))
	}
	assert.Equal(t, int64(1), svc.getChargeRuns.Load(), "GetCharge runs")
	assert.True(t, proto.Equal(got[0], got[1]))
	assert.Equal(t, []string{"", "true"}, replayed)

	for range 2 {
		_, err := client.Charge(t.Context(), chargeRequest("charge"))
		require.NoError(t, err)
	}
	assert.Equal(t, int64(2), svc.chargeRuns.Load(), "Charge is no longer guarded")
}

// TestInterceptorReleases covers the outcomes that are not stored (SPEC
// §4.5): the claim is released, so a retry runs the handler again.
func TestInterceptorReleases(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opts []idempotency.Option
		// first answers the first run; the retry runs chargeHandler.
		first    func(context.Context, *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error)
		cancel   bool // the client cancels the first call once the handler runs
		wantCode connect.Code
	}{
		{
			name: "panic",
			first: func(context.Context, *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
				panic("boom")
			},
			wantCode: connect.CodeInternal,
		},
		{
			name: "context error after the client left",
			first: func(ctx context.Context, _ *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
				<-ctx.Done()
				return nil, ctx.Err()
			},
			cancel:   true,
			wantCode: connect.CodeCanceled,
		},
		{
			name: "canceled connect error after the client left",
			first: func(ctx context.Context, _ *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
				<-ctx.Done()
				return nil, connect.NewError(connect.CodeCanceled, errors.New("gave up"))
			},
			cancel:   true,
			wantCode: connect.CodeCanceled,
		},
		{
			name:  "response over the size limit",
			opts:  []idempotency.Option{idempotency.WithMaxResponseSize(16)},
			first: chargeHandler,
		},
		{
			name: "outcome the store policy rejects",
			opts: []idempotency.Option{idempotency.WithStorePolicy(idempotency.StoreSuccess)},
			first: func(context.Context, *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
				return nil, connect.NewError(connect.CodeInternal, errors.New("ledger down"))
			},
			wantCode: connect.CodeInternal,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			store := newCountingStore(t)
			store.released = make(chan struct{}, 1)
			running := make(chan struct{}, 1)
			var runs atomic.Int64
			svc := &paymentServer{charge: func(ctx context.Context, req *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
				if runs.Add(1) == 1 {
					running <- struct{}{}
					return tt.first(ctx, req)
				}
				return chargeHandler(ctx, req)
			}}
			recoverPanic := connect.WithRecover(func(context.Context, connect.Spec, http.Header, any) error {
				return connect.NewError(connect.CodeInternal, errors.New("handler panicked"))
			})
			client := startServer(t, svc, recoverPanic, connect.WithInterceptors(idempotency.NewInterceptor(store, append([]idempotency.Option{quiet}, tt.opts...)...)))()

			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			if tt.cancel {
				go func() {
					<-running
					cancel()
				}()
			}
			_, err := client.Charge(ctx, chargeRequest("key"))
			if tt.wantCode != 0 {
				assert.Equal(t, tt.wantCode, connect.CodeOf(err))
			} else {
				assert.NoError(t, err)
			}
			select {
			case <-store.released:
			case <-time.After(10 * time.Second):
				t.Fatal("claim not released")
			}

			res, err := client.Charge(t.Context(), chargeRequest("key"))
			require.NoError(t, err)
			assert.Empty(t, res.Header().Get(idempotency.DefaultReplayHeader), "the retry was a replay")
			assert.Equal(t, int64(2), runs.Load(), "handler runs")
		})
	}
}

// TestInterceptorStoresFinishedWorkAfterClientLeft checks that a handler
// that completes its work, although its client went away, has its answer
// stored: that client's retry is the usual case (SPEC §4.5).
func TestInterceptorStoresFinishedWorkAfterClientLeft(t *testing.T) {
	t.Parallel()
	running := make(chan struct{})
	returned := make(chan struct{})
	svc := &paymentServer{charge: func(ctx context.Context, req *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
		close(running)
		<-ctx.Done()
		defer close(returned)
		return chargeHandler(ctx, req)
	}}
	client := guarded(t, svc, memory.New(), idempotency.WithWait(10*time.Second))()

	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		<-running
		cancel()
	}()
	_, err := client.Charge(ctx, chargeRequest("key"))
	assert.Equal(t, connect.CodeCanceled, connect.CodeOf(err))
	<-returned

	// The retry may arrive before the answer is stored; WithWait lets it
	// wait for it.
	res, err := client.Charge(t.Context(), chargeRequest("key"))
	require.NoError(t, err)
	assert.Equal(t, "true", res.Header().Get(idempotency.DefaultReplayHeader))
	assert.Equal(t, int64(1), svc.chargeRuns.Load(), "handler runs")
}

// TestInterceptorCorruptRecords checks that a record the interceptor cannot
// replay is answered as a store failure, and that nothing panics or runs.
func TestInterceptorCorruptRecords(t *testing.T) {
	t.Parallel()
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	tests := []struct {
		name   string
		record string
	}{
		{name: "not JSON", record: "{not json"},
		{name: "half written", record: `{"v":1,"s":200,"m":"idemkey.payments.v1.ChargeRe`},
		{name: "empty", record: ""},
		{name: "unknown message", record: `{"v":1,"s":200,"m":"idemkey.payments.v1.NoSuchResponse","b":"` + b64("{}") + `"}`},
		{name: "invalid message name", record: `{"v":1,"s":200,"m":"not a name!","b":"` + b64("{}") + `"}`},
		{name: "another procedure's message", record: `{"v":1,"s":200,"m":"idemkey.payments.v1.RefundResponse","b":"` + b64("{}") + `"}`},
		{name: "undecodable body", record: `{"v":1,"s":200,"m":"idemkey.payments.v1.ChargeResponse","b":"` + b64(`{"chargeId":`) + `"}`},
		{name: "body of the wrong shape", record: `{"v":1,"s":200,"m":"idemkey.payments.v1.ChargeResponse","b":"` + b64(`{"amountCents":"many"}`) + `"}`},
		{name: "neither message nor error", record: `{"v":1,"s":200}`},
		{name: "error code out of range", record: `{"v":1,"s":500,"e":{"c":99,"msg":"x"}}`},
		{name: "error detail without type", record: `{"v":1,"s":400,"e":{"c":3,"d":[{"t":"","v":""}]}}`},
		{name: "future version", record: `{"v":2,"s":200,"m":"idemkey.payments.v1.ChargeResponse"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			store := newCountingStore(t)
			store.claim = func(context.Context, string, string, time.Duration) (idempotency.ClaimResult, error) {
				return idempotency.ClaimResult{State: idempotency.StateCompleted, Record: []byte(tt.record)}, nil
			}
			svc := &paymentServer{charge: chargeHandler}
			var logs logSink
			for _, p := range protocols {
				client := guarded(t, svc, store, logs.option())(p.opts...)
				_, err := client.Charge(t.Context(), chargeRequest("secret-key-7f3a"))
				e := asConnectError(t, err)
				assert.Equal(t, connect.CodeUnavailable, e.Code(), p.name)
				assert.Equal(t, idempotency.StatusStoreUnavailable, e.Meta().Get(idempotency.StatusHeader), p.name)
			}
			assert.Zero(t, svc.chargeRuns.Load(), "handler runs")
			assert.Contains(t, logs.String(), "level=ERROR")
			assert.NotContains(t, logs.String(), "secret-key-7f3a", "the raw key was logged")
		})
	}
}

func TestInterceptorKeySpellings(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		opts       []idempotency.Option
		keys       [2]string
		wantRuns   int64
		wantReplay bool
	}{
		{name: "quoted and raw are one key", keys: [2]string{"abc", `"abc"`}, wantRuns: 1, wantReplay: true},
		{name: "keys differ", keys: [2]string{"abc", "abd"}, wantRuns: 2},
		{
			name:       "UUID spellings are one key under WithEnforceUUID4",
			opts:       []idempotency.Option{idempotency.WithEnforceUUID4(true)},
			keys:       [2]string{"f47ac10b-58cc-4372-a567-0e02b2c3d479", "urn:uuid:F47AC10B-58CC-4372-A567-0E02B2C3D479"},
			wantRuns:   1,
			wantReplay: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			svc := &paymentServer{charge: chargeHandler}
			client := guarded(t, svc, memory.New(), tt.opts...)()
			var res *connect.Response[paymentsv1.ChargeResponse]
			for _, k := range tt.keys {
				var err error
				res, err = client.Charge(t.Context(), chargeRequest(k))
				require.NoError(t, err)
			}
			assert.Equal(t, tt.wantRuns, svc.chargeRuns.Load())
			assert.Equal(t, tt.wantReplay, res.Header().Get(idempotency.DefaultReplayHeader) == "true")
		})
	}
}

func TestInterceptorKeyScope(t *testing.T) {
	t.Parallel()
	svc := &paymentServer{charge: chargeHandler}
	client := guarded(t, svc, memory.New(), idempotency.WithKeyScope(func(_ context.Context, h http.Header) string {
		return h.Get("X-Tenant")
	}))()
	call := func(tenant string) *connect.Response[paymentsv1.ChargeResponse] {
		req := chargeRequest("shared-key")
		req.Header().Set("X-Tenant", tenant)
		res, err := client.Charge(t.Context(), req)
		require.NoError(t, err)
		return res
	}
	a, b, again := call("tenant-a"), call("tenant-b"), call("tenant-a")
	assert.Equal(t, int64(2), svc.chargeRuns.Load(), "handler runs")
	assert.NotEqual(t, a.Msg.GetChargeId(), b.Msg.GetChargeId(), "one tenant got another's response")
	assert.Equal(t, "true", again.Header().Get(idempotency.DefaultReplayHeader))
	assert.Equal(t, a.Msg.GetChargeId(), again.Msg.GetChargeId())
}

// TestInterceptorOuterView checks what an interceptor outside this one sees
// of a replay: the wrapper unwraps to the generated message.
func TestInterceptorOuterView(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var seen []any
	outer := connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			res, err := next(ctx, req)
			if err == nil {
				msg := res.Any()
				if w, ok := msg.(interface{ Unwrap() proto.Message }); ok {
					msg = w.Unwrap()
				}
				mu.Lock()
				seen = append(seen, msg)
				mu.Unlock()
			}
			return res, err
		}
	})
	svc := &paymentServer{charge: chargeHandler}
	client := startServer(t, svc, connect.WithInterceptors(outer, idempotency.NewInterceptor(memory.New())))()
	for range 2 {
		_, err := client.Charge(t.Context(), chargeRequest("key"))
		require.NoError(t, err)
	}
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, seen, 2)
	for _, m := range seen {
		require.IsType(t, &paymentsv1.ChargeResponse{}, m)
	}
	assert.True(t, proto.Equal(seen[0].(proto.Message), seen[1].(proto.Message)))
}

func TestNewInterceptorPanicsWithoutStore(t *testing.T) {
	t.Parallel()
	assert.PanicsWithValue(t, "idempotency: NewInterceptor: store must not be nil", func() {
		idempotency.NewInterceptor(nil)
	})
}

// TestInterceptorStoredHeaders checks which response headers a replay
// carries: the handler's own, but never credentials or protocol headers.
func TestInterceptorStoredHeaders(t *testing.T) {
	t.Parallel()
	svc := &paymentServer{charge: func(ctx context.Context, req *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
		res, err := chargeHandler(ctx, req)
		res.Header().Set("Set-Cookie", "session=s3cr3t")
		res.Header().Set("Connect-Custom", "reserved")
		res.Header().Set("Content-Language", "en")
		return res, err
	}}
	client := guarded(t, svc, memory.New())()

	first, err := client.Charge(t.Context(), chargeRequest("key"))
	require.NoError(t, err)
	retry, err := client.Charge(t.Context(), chargeRequest("key"))
	require.NoError(t, err)

	assert.Equal(t, "session=s3cr3t", first.Header().Get("Set-Cookie"), "precondition: the client sees the cookie")
	assert.Empty(t, retry.Header().Get("Set-Cookie"), "a cookie was replayed")
	assert.Empty(t, retry.Header().Get("Connect-Custom"), "a protocol header was replayed")
	assert.Equal(t, "en", retry.Header().Get("Content-Language"))
	assert.Equal(t, first.Header().Get("Content-Type"), retry.Header().Get("Content-Type"))
}

func TestInterceptorReplayDropsCredentialsFromForeignRecords(t *testing.T) {
	t.Parallel()
	// A record written by someone else (another version, a hand edit) that
	// carries credentials: they must not reach the client.
	foreign := []byte(`{"v":1,"s":200,"m":"idemkey.payments.v1.ChargeResponse","b":"e30=",` +
		`"h":{"Set-Cookie":["session=stolen"],"authorization":["Bearer x"],"X-Kept":["yes"]},` +
		`"t":{"Set-Cookie":["t=1"]}}`)
	store := &faultyStore{Store: newMemory(t), corrupt: foreign}
	svc := &paymentServer{charge: chargeHandler}
	client := guarded(t, svc, store)()
	res, err := client.Charge(t.Context(), chargeRequest("foreign"))
	require.NoError(t, err)
	assert.Equal(t, "true", res.Header().Get(idempotency.DefaultReplayHeader))
	assert.Equal(t, "yes", res.Header().Get("X-Kept"))
	assert.Empty(t, res.Header().Values("Set-Cookie"))
	assert.Empty(t, res.Header().Values("Authorization"))
	assert.Empty(t, res.Trailer().Values("Set-Cookie"))
	assert.Zero(t, svc.chargeRuns.Load())
}
