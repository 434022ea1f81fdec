package connectv2_test

import (
	"context"
	"strconv"
	"testing"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connectinprocess"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/connectv2"
	"github.com/idemkey/idempotency/internal/gen/connectv2/idemkey/payments/v1/paymentsv1connect"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/internal/loadtest"
	"github.com/idemkey/idempotency/store/memory"
)

// BenchmarkConnectV1 and BenchmarkConnectV2 measure one workload, a Connect
// JSON unary call of Charge served in process through net/http on the
// memory store, on connect-go v1 with the v1 interceptor and on v2 with
// this package's: Warmup, Bare, NoKey, Bare, First, Bare, Replay, Bare (see
// [loadtest.Run]). Run them in rounds (-count) and compare each family's
// paths with its Bare neighbours with internal/benchratio.
func BenchmarkConnectV1(b *testing.B) {
	loadtest.Run(b, loadtest.Interceptor(), loadtest.Memory(), false)
}

// BenchmarkConnectV2 is [BenchmarkConnectV1] on connect-go v2.
func BenchmarkConnectV2(b *testing.B) {
	loadtest.Run(b, loadtest.InterceptorV2(), loadtest.Memory(), false)
}

// BenchmarkConnectV2InProcess measures the same paths through
// connectinprocess, where no HTTP, codec or framing stands around the
// interceptor: the bare call is a few hundred nanoseconds, so the ratios
// show the interceptor's own cost.
func BenchmarkConnectV2InProcess(b *testing.B) {
	newClient := func(interceptors ...connect.ServerInterceptor) paymentsv1connect.PaymentServiceClient {
		server := connect.NewServer(interceptors...)
		paymentsv1connect.RegisterPaymentServiceHandler(server, benchCharges{})
		return paymentsv1connect.NewPaymentServiceClient(connect.NewClient(connectinprocess.New(server)))
	}
	req := &paymentsv1.ChargeRequest{AccountId: "acct_1", AmountCents: 1250, Currency: "EUR"}
	run := func(b *testing.B, client paymentsv1connect.PaymentServiceClient, header string, hot bool, wantReplay bool) {
		b.ReportAllocs()
		var n uint64
		buf := make([]byte, 0, 32)
		for b.Loop() {
			n++
			k := n
			if hot {
				k %= hotKeys
			}
			buf = strconv.AppendUint(append(buf[:0], "bench-"...), 1_000_000_000_000+k, 10)
			ctx, info := connect.NewClientContext(b.Context())
			info.RequestHeader().Set(header, string(buf))
			if _, err := client.Charge(ctx, req); err != nil {
				b.Fatal(err)
			}
			if replayed := info.ResponseHeader().Get(idempotency.DefaultReplayHeader) == "true"; replayed != wantReplay {
				b.Fatalf("replayed is %v, want %v", replayed, wantReplay)
			}
		}
	}
	bare := newClient()
	guarded := func(opts ...idempotency.Option) paymentsv1connect.PaymentServiceClient {
		return newClient(connectv2.NewServerInterceptor(memory.New(), opts...))
	}
	b.Run("Warmup", func(b *testing.B) { run(b, bare, idempotency.DefaultIdempotencyHeader, false, false) })
	b.Run("Bare", func(b *testing.B) { run(b, bare, idempotency.DefaultIdempotencyHeader, false, false) })
	b.Run("NoKey", func(b *testing.B) {
		run(b, guarded(idempotency.WithIdempotencyHeader("X-Other-Key")), idempotency.DefaultIdempotencyHeader, false, false)
	})
	b.Run("Bare", func(b *testing.B) { run(b, bare, idempotency.DefaultIdempotencyHeader, false, false) })
	b.Run("First", func(b *testing.B) { run(b, guarded(), idempotency.DefaultIdempotencyHeader, false, false) })
	b.Run("Bare", func(b *testing.B) { run(b, bare, idempotency.DefaultIdempotencyHeader, false, false) })
	b.Run("Replay", func(b *testing.B) {
		client := guarded()
		for i := range hotKeys {
			ctx, info := connect.NewClientContext(b.Context())
			info.RequestHeader().Set(idempotency.DefaultIdempotencyHeader, "bench-"+strconv.FormatUint(1_000_000_000_000+uint64(i), 10))
			if _, err := client.Charge(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
		run(b, client, idempotency.DefaultIdempotencyHeader, true, true)
	})
	b.Run("Bare", func(b *testing.B) { run(b, bare, idempotency.DefaultIdempotencyHeader, false, false) })
}

type benchCharges struct {
	paymentsv1connect.UnimplementedPaymentServiceHandler
}

func (benchCharges) Charge(_ context.Context, _ *paymentsv1.ChargeRequest) (*paymentsv1.ChargeResponse, error) {
	return &paymentsv1.ChargeResponse{ChargeId: "ch_1", Status: "succeeded", AmountCents: 1250}, nil
}

// hotKeys is how many recorded keys a replay run cycles through, as in
// package loadtest.
const hotKeys = 16
