package main

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	conformancev1 "github.com/idemkey/idempotency/internal/conformance/gen/connectrpc/conformance/v1"
	"github.com/idemkey/idempotency/internal/conformance/gen/connectrpc/conformance/v1/conformancev1connect"
)

// testCaseHeader carries the name of the test case in every request the
// conformance runner sends.
const testCaseHeader = "X-Test-Case-Name"

// executions counts how often the handler of each test case ran, per pass.
type executions struct {
	mu     sync.Mutex
	pass   int
	counts []map[call]int // one map per pass
}

func (e *executions) startPass() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.pass = len(e.counts)
	e.counts = append(e.counts, map[call]int{})
}

func (e *executions) add(req connect.AnyRequest) {
	c := call{procedure: req.Spec().Procedure, testCase: req.Header().Get(testCaseHeader)}
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.counts) > 0 {
		e.counts[e.pass][c]++
	}
}

func (e *executions) of(pass int) map[call]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.counts[pass]
}

// service implements the unary procedures of the ConformanceService as the
// conformance suite describes them; the streaming ones answer unimplemented,
// and the runner is configured not to call them.
type service struct {
	conformancev1connect.UnimplementedConformanceServiceHandler
	executions *executions
}

var _ conformancev1connect.ConformanceServiceHandler = (*service)(nil)

func (s *service) Unary(
	ctx context.Context, req *connect.Request[conformancev1.UnaryRequest],
) (*connect.Response[conformancev1.UnaryResponse], error) {
	s.executions.add(req)
	payload, header, trailer, err := respond(ctx, req, req.Msg.GetResponseDefinition())
	if err != nil {
		return nil, err
	}
	res := connect.NewResponse(&conformancev1.UnaryResponse{Payload: payload})
	addHeaders(res.Header(), header)
	addHeaders(res.Trailer(), trailer)
	return res, nil
}

func (s *service) IdempotentUnary(
	ctx context.Context, req *connect.Request[conformancev1.IdempotentUnaryRequest],
) (*connect.Response[conformancev1.IdempotentUnaryResponse], error) {
	s.executions.add(req)
	payload, header, trailer, err := respond(ctx, req, req.Msg.GetResponseDefinition())
	if err != nil {
		return nil, err
	}
	if req.HTTPMethod() == http.MethodGet {
		payload.RequestInfo.ConnectGetInfo = &conformancev1.ConformancePayload_ConnectGetInfo{
			QueryParams: toProtoHeaders(req.Peer().Query),
		}
	}
	res := connect.NewResponse(&conformancev1.IdempotentUnaryResponse{Payload: payload})
	addHeaders(res.Header(), header)
	addHeaders(res.Trailer(), trailer)
	return res, nil
}

// respond builds the answer that def asks for: a payload that echoes the
// request, or an error with the echo in its details, and the headers and
// trailers to send, after the delay def asks for.
func respond(
	ctx context.Context, req connect.AnyRequest, def *conformancev1.UnaryResponseDefinition,
) (*conformancev1.ConformancePayload, []*conformancev1.Header, []*conformancev1.Header, error) {
	msg, ok := req.Any().(proto.Message)
	if !ok {
		return nil, nil, nil, connect.NewError(connect.CodeInternal, errors.New("request is not a protobuf message"))
	}
	echo, err := anypb.New(msg)
	if err != nil {
		return nil, nil, nil, connect.NewError(connect.CodeInternal, err)
	}
	info := &conformancev1.ConformancePayload_RequestInfo{
		RequestHeaders: toProtoHeaders(req.Header()),
		Requests:       []*anypb.Any{echo},
	}
	if deadline, ok := ctx.Deadline(); ok {
		info.TimeoutMs = proto.Int64(time.Until(deadline).Milliseconds())
	}
	if err := delay(ctx, def.GetResponseDelayMs()); err != nil {
		return nil, nil, nil, err
	}
	if def == nil {
		return &conformancev1.ConformancePayload{RequestInfo: info}, nil, nil, nil
	}
	if e := def.GetError(); e != nil {
		cerr := connect.NewError(connect.Code(e.GetCode()), errors.New(e.GetMessage()))
		infoAny, err := anypb.New(info)
		if err != nil {
			return nil, nil, nil, connect.NewError(connect.CodeInternal, err)
		}
		details := append(slices.Clone(e.GetDetails()), infoAny)
		for _, d := range details {
			detail, err := connect.NewErrorDetail(d)
			if err != nil {
				return nil, nil, nil, connect.NewError(connect.CodeInternal, err)
			}
			cerr.AddDetail(detail)
		}
		// A unary error carries headers and trailers in one set of
		// metadata; the suite accepts them merged.
		addHeaders(cerr.Meta(), def.GetResponseHeaders())
		addHeaders(cerr.Meta(), def.GetResponseTrailers())
		return nil, nil, nil, cerr
	}
	payload := &conformancev1.ConformancePayload{RequestInfo: info, Data: def.GetResponseData()}
	return payload, def.GetResponseHeaders(), def.GetResponseTrailers(), nil
}

// delay waits before answering, as a test case may ask, unless the
// request's context ends first: then the handler returns the context's
// error, as a handler whose client went away does.
func delay(ctx context.Context, ms uint32) error {
	if ms == 0 {
		return nil
	}
	timer := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func addHeaders(dst http.Header, src []*conformancev1.Header) {
	for _, h := range src {
		for _, v := range h.GetValue() {
			dst.Add(h.GetName(), v)
		}
	}
}

func toProtoHeaders(src map[string][]string) []*conformancev1.Header {
	headers := make([]*conformancev1.Header, 0, len(src))
	for name, values := range src {
		headers = append(headers, &conformancev1.Header{Name: name, Value: values})
	}
	return headers
}
