package grpcmw_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/grpcmw"
	gatewayv1 "github.com/idemkey/idempotency/internal/gen/idemkey/gateway/v1"
	"github.com/idemkey/idempotency/store/memory"
)

// serve starts srv with the server interceptor and returns its listener.
func serve(t *testing.T, srv gatewayv1.ChargeServiceServer) *bufconn.Listener {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	s := grpc.NewServer(grpc.ChainUnaryInterceptor(grpcmw.UnaryServerInterceptor(memory.New())))
	gatewayv1.RegisterChargeServiceServer(s, srv)
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	return lis
}

// keyOf returns the key a handler was called with.
func keyOf(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if vs := md.Get("idempotency-key"); len(vs) == 1 {
		return vs[0]
	}
	return ""
}

func TestClientRetriesInFlightAndGetsReplay(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	started, release := make(chan struct{}), make(chan struct{})
	srv := &chargeServer{create: func(context.Context, *gatewayv1.CreateChargeRequest) (*gatewayv1.CreateChargeResponse, error) {
		if calls.Add(1) == 1 {
			close(started)
			<-release
		}
		return created(&gatewayv1.Charge{Id: "ch_1"}), nil
	}}
	lis := serve(t, srv)
	plain := dialBuf(t, lis)

	// The inner interceptor sees every attempt: the first in-flight answer
	// lets the first call finish.
	var attempts []codes.Code
	var once sync.Once
	observe := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		attempts = append(attempts, status.Code(err))
		if status.Code(err) == codes.Aborted {
			once.Do(func() { close(release) })
		}
		return err
	}
	retrying := dialBuf(t, lis, grpcmw.UnaryClientInterceptor(idempotency.WithBackoff(time.Millisecond, 20*time.Millisecond)), observe)

	ctx := metadata.AppendToOutgoingContext(t.Context(), "idempotency-key", "key-1")
	req := &gatewayv1.CreateChargeRequest{AccountId: "acct_1"}
	done := make(chan error, 1)
	go func() {
		_, err := gatewayv1.NewChargeServiceClient(plain).CreateCharge(ctx, req)
		done <- err
	}()
	<-started
	var header metadata.MD
	res, err := gatewayv1.NewChargeServiceClient(retrying).CreateCharge(ctx, req, grpc.Header(&header))
	require.NoError(t, err)
	require.NoError(t, <-done)
	assert.Equal(t, "ch_1", res.GetCharge().GetId())
	assert.Equal(t, []string{"true"}, header.Get("idempotent-replayed"), "the caller's own Header option sees the last attempt")
	assert.Equal(t, codes.Aborted, attempts[0])
	assert.Equal(t, codes.OK, attempts[len(attempts)-1])
	assert.Equal(t, int64(1), calls.Load())
}

func TestClientKeys(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var keys []string
	srv := &chargeServer{
		create: func(ctx context.Context, _ *gatewayv1.CreateChargeRequest) (*gatewayv1.CreateChargeResponse, error) {
			mu.Lock()
			keys = append(keys, keyOf(ctx))
			mu.Unlock()
			return created(&gatewayv1.Charge{Id: "ch_1"}), nil
		},
		get: func(ctx context.Context, _ *gatewayv1.GetChargeRequest) (*gatewayv1.GetChargeResponse, error) {
			return found(&gatewayv1.Charge{Id: keyOf(ctx)}), nil
		},
	}
	cc := dialBuf(t, serve(t, srv), grpcmw.UnaryClientInterceptor())
	client := gatewayv1.NewChargeServiceClient(cc)

	ctx := metadata.AppendToOutgoingContext(t.Context(), "x-tenant", "t1")
	for range 2 {
		_, err := client.CreateCharge(ctx, &gatewayv1.CreateChargeRequest{AccountId: "acct_1"})
		require.NoError(t, err)
	}
	md, _ := metadata.FromOutgoingContext(ctx)
	assert.Empty(t, md.Get("idempotency-key"), "the caller's metadata is left alone")
	assert.Equal(t, []string{"t1"}, md.Get("x-tenant"))
	require.Len(t, keys, 2)
	assert.NotEqual(t, keys[0], keys[1], "one call, one key")
	for _, k := range keys {
		u, err := uuid.Parse(k)
		require.NoError(t, err)
		assert.Equal(t, uuid.Version(4), u.Version())
	}

	_, err := client.CreateCharge(metadata.AppendToOutgoingContext(t.Context(), "idempotency-key", "mine"), &gatewayv1.CreateChargeRequest{})
	require.NoError(t, err)
	assert.Equal(t, "mine", keys[2], "a key the caller set is kept")

	got, err := client.GetCharge(t.Context(), &gatewayv1.GetChargeRequest{})
	require.NoError(t, err)
	assert.Empty(t, got.GetCharge().GetId(), "a NO_SIDE_EFFECTS method gets no key")
}

func TestClientRetriesConnectionFailures(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	srv := &chargeServer{create: func(_ context.Context, req *gatewayv1.CreateChargeRequest) (*gatewayv1.CreateChargeResponse, error) {
		calls.Add(1)
		if req.GetAccountId() == "down" {
			return nil, status.Error(codes.Unavailable, "the bank is down")
		}
		return created(&gatewayv1.Charge{Id: "ch_1"}), nil
	}}
	lis := serve(t, srv)
	var dials atomic.Int64
	cc, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			if dials.Add(1) == 1 {
				return nil, errors.New("connection refused")
			}
			return lis.DialContext(ctx)
		}),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: time.Millisecond, Multiplier: 1, MaxDelay: time.Millisecond}}),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(grpcmw.UnaryClientInterceptor(
			idempotency.WithMaxRetries(10), idempotency.WithBackoff(5*time.Millisecond, 20*time.Millisecond))))
	require.NoError(t, err)
	t.Cleanup(func() { _ = cc.Close() })
	client := gatewayv1.NewChargeServiceClient(cc)

	_, err = client.CreateCharge(t.Context(), &gatewayv1.CreateChargeRequest{AccountId: "acct_1"})
	require.NoError(t, err, "the failed connection is retried")
	assert.GreaterOrEqual(t, dials.Load(), int64(2))
	assert.Equal(t, int64(1), calls.Load())

	_, err = client.CreateCharge(t.Context(), &gatewayv1.CreateChargeRequest{AccountId: "down"})
	assert.Equal(t, codes.Unavailable, status.Code(err))
	assert.Equal(t, int64(2), calls.Load(), "a handler's Unavailable is an answer: not retried")
}
