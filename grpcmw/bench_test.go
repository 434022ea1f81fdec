package grpcmw_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/test/bufconn"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/grpcmw"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/internal/loadtest"
	"github.com/idemkey/idempotency/store/memory"
)

// benchCharges answers every charge with the message of the Connect
// workload of package loadtest.
type benchCharges struct {
	paymentsv1.UnimplementedPaymentServiceServer
}

func (benchCharges) Charge(context.Context, *paymentsv1.ChargeRequest) (*paymentsv1.ChargeResponse, error) {
	return &paymentsv1.ChargeResponse{ChargeId: "ch_1", Status: "succeeded", AmountCents: 1250}, nil
}

// benchClient serves the payments service over an in-memory connection,
// with the server options given, and returns a client of it.
func benchClient(b *testing.B, opts ...grpc.ServerOption) paymentsv1.PaymentServiceClient {
	lis := bufconn.Listen(1 << 20)
	s := grpc.NewServer(opts...)
	paymentsv1.RegisterPaymentServiceServer(s, benchCharges{})
	go func() { _ = s.Serve(lis) }()
	b.Cleanup(s.Stop)
	return paymentsv1.NewPaymentServiceClient(dialBuf(b, lis))
}

// BenchmarkGRPC measures a grpc-go unary call of the payments service's
// Charge over bufconn, on the memory store, one call at a time, with the
// key metadata on every path: Warmup, Bare, NoKey, Bare, First, Bare,
// Replay, Bare, so that internal/benchratio compares each path with its
// neighbours in time. The bare server has no interceptor; NoKey's
// interceptor reads another metadata key.
func BenchmarkGRPC(b *testing.B) {
	guarded := func(b *testing.B, opts ...idempotency.Option) paymentsv1.PaymentServiceClient {
		return benchClient(b, grpc.ChainUnaryInterceptor(grpcmw.UnaryServerInterceptor(memory.New(), opts...)))
	}
	bare := func(b *testing.B) { runGRPC(b, benchClient(b), false) }
	b.Run("Warmup", bare)
	b.Run("Bare", bare)
	b.Run("NoKey", func(b *testing.B) { runGRPC(b, guarded(b, idempotency.WithIdempotencyHeader("X-Other-Key")), false) })
	b.Run("Bare", bare)
	b.Run("First", func(b *testing.B) { runGRPC(b, guarded(b), false) })
	b.Run("Bare", bare)
	b.Run("Replay", func(b *testing.B) { runGRPC(b, guarded(b), true) })
	b.Run("Bare", bare)
}

// BenchmarkConnect is the Connect v1 interceptor's family of package
// loadtest, in this binary, for the ratio comparison with BenchmarkGRPC.
func BenchmarkConnect(b *testing.B) {
	loadtest.Run(b, loadtest.Interceptor(), loadtest.Memory(), false)
}

var benchKeys atomic.Uint64

// runGRPC sends b.N calls with a fresh key each, or with hot one key.
func runGRPC(b *testing.B, client paymentsv1.PaymentServiceClient, hot bool) {
	req := &paymentsv1.ChargeRequest{AccountId: "acct_1", AmountCents: 1250, Currency: "EUR"}
	base := benchKeys.Add(1) * 1_000_000_000_000
	buf := make([]byte, 0, 32)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		n := base
		if !hot {
			n += uint64(i)
		}
		buf = strconv.AppendUint(append(buf[:0], "bench-"...), n, 10)
		ctx := metadata.AppendToOutgoingContext(b.Context(), "idempotency-key", string(buf))
		res, err := client.Charge(ctx, req)
		if err != nil || res.GetChargeId() != "ch_1" {
			b.Fatal(res, err)
		}
	}
}
