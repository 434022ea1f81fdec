package loadtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"

	"connectrpc.com/connect"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/httpmw"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1/paymentsv1connect"
)

// RoundTrips is work a baseline does before the bare handler runs, given
// the request's context and key: on Redis, the plain round trips that a
// guarded request cannot do without (see [Redis.Baseline]).
type RoundTrips func(ctx context.Context, key string) error

// A Workload is one kind of request and the handler that answers it, bare,
// guarded by the library, or behind a baseline's [RoundTrips]. Every
// request of a workload carries the same headers, whatever handler it
// reaches, so that the bare and the guarded handlers parse the same
// request. A Workload is safe for concurrent use.
type Workload struct {
	path        string
	contentType string
	body        []byte
	status      int
	// answer is the bare handler's body, which every answer must repeat.
	answer []byte

	bare   http.Handler
	guard  func(store idempotency.Store, opts ...idempotency.Option) http.Handler
	around func(trips RoundTrips) http.Handler
}

// Middleware returns the workload of the net/http middleware: a 13-byte
// JSON request, and a handler that reads it and answers 201 with a 9-byte
// JSON body.
func Middleware() *Workload {
	answer := []byte(`{"id":42}`)
	handler := func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(answer)
	}
	return newWorkload(&Workload{
		path:        "/payments",
		contentType: "application/json",
		body:        []byte(`{"amount":10}`),
		status:      http.StatusCreated,
		bare:        http.HandlerFunc(handler),
		guard: func(store idempotency.Store, opts ...idempotency.Option) http.Handler {
			return httpmw.New(store, opts...)(http.HandlerFunc(handler))
		},
		around: func(trips RoundTrips) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if err := trips(r.Context(), r.Header.Get(idempotency.DefaultIdempotencyHeader)); err != nil {
					http.Error(w, err.Error(), http.StatusInternalServerError)
					return
				}
				handler(w, r)
			})
		},
	})
}

// charges answers every charge with the same small message.
type charges struct {
	paymentsv1connect.UnimplementedPaymentServiceHandler
}

func (charges) Charge(context.Context, *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
	return connect.NewResponse(&paymentsv1.ChargeResponse{ChargeId: "ch_1", Status: "succeeded", AmountCents: 1250}), nil
}

// Interceptor returns the workload of the Connect interceptor: a Connect
// JSON unary call of the payments service's Charge, whose handler answers
// with a small message.
func Interceptor() *Workload {
	handler := func(opts ...connect.HandlerOption) http.Handler {
		_, h := paymentsv1connect.NewPaymentServiceHandler(charges{}, opts...)
		return h
	}
	return newWorkload(&Workload{
		path:        paymentsv1connect.PaymentServiceChargeProcedure,
		contentType: "application/json",
		body:        []byte(`{"accountId":"acct_1","amountCents":"1250","currency":"EUR"}`),
		status:      http.StatusOK,
		bare:        handler(),
		guard: func(store idempotency.Store, opts ...idempotency.Option) http.Handler {
			return handler(connect.WithInterceptors(idempotency.NewInterceptor(store, opts...)))
		},
		around: func(trips RoundTrips) http.Handler {
			return handler(connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
				return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
					if err := trips(ctx, req.Header().Get(idempotency.DefaultIdempotencyHeader)); err != nil {
						return nil, connect.NewError(connect.CodeInternal, err)
					}
					return next(ctx, req)
				}
			})))
		},
	})
}

// newWorkload learns the answer every request must get from one request to
// the bare handler.
func newWorkload(w *Workload) *Workload {
	var buf []byte
	rec := httptest.NewRecorder()
	w.bare.ServeHTTP(rec, w.newRequest(context.Background(), w.key(&buf, 0)))
	w.answer = rec.Body.Bytes()
	return w
}

// Bare returns the handler without the library.
func (w *Workload) Bare() http.Handler { return w.bare }

// Guard returns the handler guarded by the library over store, configured
// by opts.
func (w *Workload) Guard(store idempotency.Store, opts ...idempotency.Option) http.Handler {
	return w.guard(store, opts...)
}

// Around returns the bare handler with trips run before it, as a plain
// middleware or interceptor would; a failed trip fails the request.
func (w *Workload) Around(trips RoundTrips) http.Handler { return w.around(trips) }

// keyBase starts the numbers of request keys high enough that every key
// has the same length, so that every request carries the same bytes.
const keyBase = 1_000_000_000_000

// key returns the nth request key, formatted into buf, which it grows and
// reuses so that a key costs one allocation, the string.
func (w *Workload) key(buf *[]byte, n uint64) string {
	*buf = strconv.AppendUint(append((*buf)[:0], "bench-"...), keyBase+n, 10)
	return string(*buf)
}

// newRequest returns a server-side request with key, as a server would
// receive it.
func (w *Workload) newRequest(ctx context.Context, key string) *http.Request {
	r := httptest.NewRequestWithContext(ctx, http.MethodPost, w.path, bytes.NewReader(w.body))
	w.setHeader(r.Header, key)
	return r
}

func (w *Workload) setHeader(h http.Header, key string) {
	h.Set("Content-Type", w.contentType)
	h.Set(idempotency.DefaultIdempotencyHeader, key)
}

// Serve sends one request with key to h in process, as a server would
// receive it, and checks the answer.
func (w *Workload) Serve(ctx context.Context, h http.Handler, key string, wantReplay bool) error {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, w.newRequest(ctx, key))
	return w.check(rec.Code, rec.Header(), rec.Body.Bytes(), wantReplay)
}

// Post sends one request with key to the server at baseURL, over client,
// and checks the answer.
func (w *Workload) Post(ctx context.Context, client *http.Client, baseURL, key string, wantReplay bool) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, baseURL+w.path, bytes.NewReader(w.body))
	if err != nil {
		return err
	}
	w.setHeader(req.Header, key)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return w.check(resp.StatusCode, resp.Header, body, wantReplay)
}

// check fails an answer that is not the bare handler's, or that is a
// replay when none is expected, or the other way round.
func (w *Workload) check(status int, header http.Header, body []byte, wantReplay bool) error {
	if status != w.status || !bytes.Equal(body, w.answer) {
		return fmt.Errorf("loadtest: answer %d %q, want %d %q", status, body, w.status, w.answer)
	}
	if replayed := header.Get(idempotency.DefaultReplayHeader) == "true"; replayed != wantReplay {
		return fmt.Errorf("loadtest: replayed is %v, want %v", replayed, wantReplay)
	}
	return nil
}
