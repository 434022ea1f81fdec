package loadtest

import (
	"context"
	"net/http"

	connectv2 "connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"

	"github.com/idemkey/idempotency"
	guard "github.com/idemkey/idempotency/connectv2"
	v2connect "github.com/idemkey/idempotency/internal/gen/connectv2/idemkey/payments/v1/paymentsv1connect"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
)

// chargesV2 is [charges] on connect-go v2.
type chargesV2 struct {
	v2connect.UnimplementedPaymentServiceHandler
}

func (chargesV2) Charge(context.Context, *paymentsv1.ChargeRequest) (*paymentsv1.ChargeResponse, error) {
	return &paymentsv1.ChargeResponse{ChargeId: "ch_1", Status: "succeeded", AmountCents: 1250}, nil
}

// InterceptorV2 returns the workload of [Interceptor] on connect-go v2: the
// same Connect JSON call of Charge, the same answer, served through
// connecthttp, guarded by package connectv2's server interceptor.
func InterceptorV2() *Workload {
	handler := func(interceptors ...connectv2.ServerInterceptor) http.Handler {
		server := connectv2.NewServer(interceptors...)
		v2connect.RegisterPaymentServiceHandler(server, chargesV2{})
		mux := http.NewServeMux()
		connecthttp.Mount(mux, server)
		return mux
	}
	return newWorkload(&Workload{
		path:        v2connect.PaymentServiceChargeProcedure,
		contentType: "application/json",
		body:        []byte(`{"accountId":"acct_1","amountCents":"1250","currency":"EUR"}`),
		status:      http.StatusOK,
		bare:        handler(),
		guard: func(store idempotency.Store, opts ...idempotency.Option) http.Handler {
			return handler(guard.NewServerInterceptor(store, opts...))
		},
		around: func(trips RoundTrips) http.Handler {
			return handler(func(next connectv2.ServerFunc) connectv2.ServerFunc {
				return func(ctx context.Context, spec connectv2.Spec, stream connectv2.ServerStream) error {
					info, _ := connectv2.CallInfoForServerContext(ctx)
					if err := trips(ctx, info.RequestHeader().Get(idempotency.DefaultIdempotencyHeader)); err != nil {
						return connectv2.NewError(connectv2.CodeInternal, err.Error())
					}
					return next(ctx, spec, stream)
				}
			})
		},
	})
}
