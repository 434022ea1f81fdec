package grpcmw_test

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/grpcmw"
	gatewayv1 "github.com/idemkey/idempotency/internal/gen/idemkey/gateway/v1"
	"github.com/idemkey/idempotency/store/memory"
)

// call is one CreateCharge call's outcome, as a grpc-go client sees it.
type call struct {
	res     *gatewayv1.CreateChargeResponse
	err     error
	header  metadata.MD
	trailer metadata.MD
}

func create(t *testing.T, cc *grpc.ClientConn, key string, req *gatewayv1.CreateChargeRequest) call {
	t.Helper()
	ctx := t.Context()
	if key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "idempotency-key", key)
	}
	var c call
	c.res, c.err = gatewayv1.NewChargeServiceClient(cc).CreateCharge(ctx, req, grpc.Header(&c.header), grpc.Trailer(&c.trailer))
	return c
}

func TestReplayResponse(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	srv := &chargeServer{create: func(ctx context.Context, req *gatewayv1.CreateChargeRequest) (*gatewayv1.CreateChargeResponse, error) {
		calls.Add(1)
		require.NoError(t, grpc.SetHeader(ctx, metadata.Pairs("x-charge", "one", "x-raw-bin", "\xff\x00\xfe")))
		require.NoError(t, grpc.SendHeader(ctx, metadata.Pairs("x-sent", "early")))
		require.NoError(t, grpc.SetTrailer(ctx, metadata.Pairs("x-total", "1200", "authorization", "secret")))
		return created(&gatewayv1.Charge{Id: "ch_1", AccountId: req.GetAccountId(), AmountCents: 1200, Status: "succeeded"}), nil
	}}
	cc := startGRPC(t, srv, memory.New())
	req := &gatewayv1.CreateChargeRequest{AccountId: "acct_1", AmountCents: 1200}

	first := create(t, cc, "key-1", req)
	require.NoError(t, first.err)
	assert.Empty(t, first.header.Get("idempotent-replayed"))
	for range 2 {
		got := create(t, cc, "key-1", req)
		require.NoError(t, got.err)
		assert.True(t, proto.Equal(first.res, got.res), "an equal message")
		assert.Equal(t, []string{"true"}, got.header.Get("idempotent-replayed"))
		for _, k := range []string{"x-charge", "x-raw-bin", "x-sent"} {
			assert.Equal(t, first.header.Get(k), got.header.Get(k), k)
		}
		assert.Equal(t, []string{"\xff\x00\xfe"}, got.header.Get("x-raw-bin"))
		assert.Equal(t, []string{"1200"}, got.trailer.Get("x-total"), "a trailer stays a trailer")
		assert.Empty(t, got.header.Get("x-total"))
		assert.Empty(t, got.trailer.Get("authorization"), "credentials are never replayed")
	}
	assert.Equal(t, int64(1), calls.Load())
}

func TestReplayError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		err     func() error
		wantMsg string
	}{
		{
			name: "status with details",
			err: func() error {
				st, _ := status.New(codes.FailedPrecondition, "card declined").WithDetails(
					&errdetails.ErrorInfo{Reason: "CARD_DECLINED", Domain: "payments.example"},
					&errdetails.RetryInfo{})
				return st.Err()
			},
			wantMsg: "card declined",
		},
		{
			name: "message that is not UTF-8",
			err:  func() error { return status.Error(codes.NotFound, "no account \xff%41 here") },
			// grpc-go sends the message percent-encoded, and replaces the
			// bytes that are not UTF-8 on the way: the replay sends the
			// stored bytes, so the client sees what it saw the first time.
			wantMsg: "no account \ufffd%41 here",
		},
		{
			name:    "plain error",
			err:     func() error { return assert.AnError },
			wantMsg: assert.AnError.Error(),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var calls atomic.Int64
			srv := &chargeServer{create: func(ctx context.Context, _ *gatewayv1.CreateChargeRequest) (*gatewayv1.CreateChargeResponse, error) {
				calls.Add(1)
				require.NoError(t, grpc.SetHeader(ctx, metadata.Pairs("x-request", "r1")))
				require.NoError(t, grpc.SetTrailer(ctx, metadata.Pairs("x-reason", "declined")))
				return nil, tt.err()
			}}
			cc := startGRPC(t, srv, memory.New())
			req := &gatewayv1.CreateChargeRequest{AccountId: "acct_1"}

			first := create(t, cc, "key-1", req)
			require.Error(t, first.err)
			want := status.Convert(first.err)
			require.Equal(t, tt.wantMsg, want.Message())
			got := create(t, cc, "key-1", req)
			st := status.Convert(got.err)
			assert.Equal(t, want.Code(), st.Code())
			assert.Equal(t, want.Message(), st.Message(), "byte for byte")
			assert.True(t, proto.Equal(want.Proto(), st.Proto()), "same status, details included")
			assert.Equal(t, []string{"true"}, got.header.Get("idempotent-replayed"))
			assert.Equal(t, []string{"r1"}, got.header.Get("x-request"))
			assert.Equal(t, []string{"declined"}, got.trailer.Get("x-reason"))
			assert.Empty(t, got.header.Get("idempotency-status"), "a handler's error is not the library's")
			assert.Equal(t, int64(1), calls.Load())
		})
	}
}

func TestLibraryErrors(t *testing.T) { //nolint:tparallel // the subtests share one claim and run in order
	t.Parallel()
	started, release := make(chan struct{}), make(chan struct{})
	srv := &chargeServer{create: func(_ context.Context, req *gatewayv1.CreateChargeRequest) (*gatewayv1.CreateChargeResponse, error) {
		if req.GetAccountId() == "slow" {
			close(started)
			<-release
		}
		return created(&gatewayv1.Charge{Id: "ch_1"}), nil
	}}
	cc := startGRPC(t, srv, memory.New(), idempotency.WithEnforceUUID4(true))
	const key = "5b6c1f2e-8a3d-4c5e-9f70-1a2b3c4d5e6f"

	done := make(chan call, 1)
	go func() { done <- create(t, cc, key, &gatewayv1.CreateChargeRequest{AccountId: "slow"}) }()
	<-started
	inFlight := create(t, cc, key, &gatewayv1.CreateChargeRequest{AccountId: "slow"})
	close(release)
	require.NoError(t, (<-done).err)
	mismatch := create(t, cc, key, &gatewayv1.CreateChargeRequest{AccountId: "other"})
	invalid := create(t, cc, "not-a-uuid", &gatewayv1.CreateChargeRequest{})

	tests := []struct {
		name           string
		got            call
		wantCode       codes.Code
		wantStatus     string
		wantRetryAfter []string
	}{
		{"in flight", inFlight, codes.Aborted, idempotency.StatusInFlight, []string{"1"}},
		{"mismatch", mismatch, codes.InvalidArgument, idempotency.StatusMismatch, nil},
		{"invalid key", invalid, codes.InvalidArgument, idempotency.StatusInvalidKey, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.wantCode, status.Code(tt.got.err))
			assert.Equal(t, []string{tt.wantStatus}, tt.got.header.Get("idempotency-status"))
			assert.Equal(t, tt.wantRetryAfter, tt.got.header.Get("retry-after"))
		})
	}
	assert.Contains(t, status.Convert(invalid.err).Message(), "v4 UUID")
}

func TestGatewayKeyMetadata(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	cc := startGRPC(t, countingCharges(&calls), memory.New())
	req := &gatewayv1.CreateChargeRequest{AccountId: "acct_1"}
	call := func(pairs ...string) (metadata.MD, error) {
		var header metadata.MD
		_, err := gatewayv1.NewChargeServiceClient(cc).CreateCharge(
			metadata.AppendToOutgoingContext(t.Context(), pairs...), req, grpc.Header(&header))
		return header, err
	}
	_, err := call("grpcgateway-idempotency-key", "k")
	require.NoError(t, err)
	header, err := call("idempotency-key", "k")
	require.NoError(t, err)
	assert.Equal(t, []string{"true"}, header.Get("idempotent-replayed"), "both names carry one key")
	_, err = call("idempotency-key", "k", "grpcgateway-idempotency-key", "k")
	assert.Equal(t, codes.InvalidArgument, status.Code(err), "two values are an invalid key")
	assert.Equal(t, int64(1), calls.Load())
}

func TestSafeMethodsPassThrough(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	srv := &chargeServer{get: func(context.Context, *gatewayv1.GetChargeRequest) (*gatewayv1.GetChargeResponse, error) {
		calls.Add(1)
		return found(&gatewayv1.Charge{Id: "ch_1"}), nil
	}}
	cc := startGRPC(t, srv, memory.New())
	ctx := metadata.AppendToOutgoingContext(t.Context(), "idempotency-key", "k")
	for range 2 {
		var header metadata.MD
		_, err := gatewayv1.NewChargeServiceClient(cc).GetCharge(ctx, &gatewayv1.GetChargeRequest{Id: "ch_1"}, grpc.Header(&header))
		require.NoError(t, err)
		assert.Empty(t, header.Get("idempotent-replayed"))
	}
	assert.Equal(t, int64(2), calls.Load(), "NO_SIDE_EFFECTS is not guarded")
}

func TestPanicReleasesClaim(t *testing.T) {
	t.Parallel()
	intercept := grpcmw.UnaryServerInterceptor(memory.New())
	info := &grpc.UnaryServerInfo{FullMethod: gatewayv1.ChargeService_CreateCharge_FullMethodName}
	ctx := metadata.NewIncomingContext(t.Context(), metadata.Pairs("idempotency-key", "k"))
	req := &gatewayv1.CreateChargeRequest{AccountId: "acct_1"}

	func() {
		defer func() { assert.Equal(t, "boom", recover()) }()
		_, _ = intercept(ctx, req, info, func(context.Context, any) (any, error) { panic("boom") })
	}()
	var ran bool
	res, err := intercept(ctx, req, info, func(context.Context, any) (any, error) {
		ran = true
		return created(&gatewayv1.Charge{Id: "ch_2"}), nil
	})
	require.NoError(t, err)
	assert.True(t, ran, "the retry runs the handler: the panic released the claim")
	assert.Equal(t, "ch_2", res.(*gatewayv1.CreateChargeResponse).GetCharge().GetId())
}

func TestOptions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		opts       []idempotency.Option
		key        string
		wantCode   codes.Code
		wantStatus []string
		wantCalls  int64
	}{
		{
			name: "key required", opts: []idempotency.Option{idempotency.WithRequireKey(true)},
			wantCode: codes.InvalidArgument, wantStatus: []string{idempotency.StatusInvalidKey}, wantCalls: 0,
		},
		{
			name: "procedure filter leaves the method out", key: "k",
			opts:     []idempotency.Option{idempotency.WithProcedureFilter(func(p string) bool { return p != gatewayv1.ChargeService_CreateCharge_FullMethodName })},
			wantCode: codes.OK, wantCalls: 2,
		},
		{
			name: "renamed key header", key: "k",
			opts:     []idempotency.Option{idempotency.WithIdempotencyHeader("X-Request-Key")},
			wantCode: codes.OK, wantCalls: 2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var calls atomic.Int64
			cc := startGRPC(t, countingCharges(&calls), memory.New(), tt.opts...)
			for range 2 {
				got := create(t, cc, tt.key, &gatewayv1.CreateChargeRequest{AccountId: "acct_1"})
				assert.Equal(t, tt.wantCode, status.Code(got.err))
				assert.Equal(t, tt.wantStatus, got.header.Get("idempotency-status"))
				assert.Empty(t, got.header.Get("idempotent-replayed"))
			}
			assert.Equal(t, tt.wantCalls, calls.Load())
		})
	}
}
