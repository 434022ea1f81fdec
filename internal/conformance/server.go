package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/idemkey/idempotency"
	conformancev1 "github.com/idemkey/idempotency/internal/conformance/gen/connectrpc/conformance/v1"
	"github.com/idemkey/idempotency/internal/conformance/gen/connectrpc/conformance/v1/conformancev1connect"
)

// servers starts the servers under test, one for each ServerCompatRequest
// the runner's server processes forward, all on one store: a test case's
// second pass finds what its first one stored, whichever process asked.
type servers struct {
	opts   []connect.HandlerOption
	logger *slog.Logger

	mu      sync.Mutex
	running []*http.Server
}

func newServers(store idempotency.Store, logger *slog.Logger) *servers {
	return &servers{
		opts: []connect.HandlerOption{
			connect.WithInterceptors(idempotency.NewInterceptor(store, idempotency.WithLogger(logger))),
			withDeflate(),
		},
		logger: logger,
	}
}

// keyFor derives a test case's idempotency key from its name, which both
// passes send: the second pass uses the keys of the first.
func keyFor(testCase string) string {
	sum := sha256.Sum256([]byte(testCase))
	return hex.EncodeToString(sum[:16])
}

// withTestCaseKey gives every request that has no idempotency key one
// derived from its test case.
func withTestCaseKey(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if name := r.Header.Get(testCaseHeader); name != "" && r.Header.Get(idempotency.DefaultIdempotencyHeader) == "" {
			r.Header.Set(idempotency.DefaultIdempotencyHeader, keyFor(name))
		}
		next.ServeHTTP(w, r)
	})
}

// start starts a server as req asks and answers where it listens.
func (s *servers) start(req *conformancev1.ServerCompatRequest, svc *service) (*conformancev1.ServerCompatResponse, error) {
	opts := append([]connect.HandlerOption{connect.WithReadMaxBytes(int(req.GetMessageReceiveLimit()))}, s.opts...)
	mux := http.NewServeMux()
	mux.Handle(conformancev1connect.NewConformanceServiceHandler(svc, opts...))
	srv := &http.Server{
		Handler:           withTestCaseKey(mux),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelDebug),
		Protocols:         new(http.Protocols),
	}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetHTTP2(true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	res := &conformancev1.ServerCompatResponse{Host: "127.0.0.1", Port: uint32(ln.Addr().(*net.TCPAddr).Port)}
	if req.GetUseTls() {
		conf, err := tlsConfig(req)
		if err != nil {
			_ = ln.Close()
			return nil, err
		}
		ln = tls.NewListener(ln, conf)
		res.PemCert = req.GetServerCreds().GetCert()
	} else {
		srv.Protocols.SetUnencryptedHTTP2(true)
	}
	s.mu.Lock()
	s.running = append(s.running, srv)
	s.mu.Unlock()
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			s.logger.Error("conformance server stopped", slog.Any("error", err))
		}
	}()
	return res, nil
}

func tlsConfig(req *conformancev1.ServerCompatRequest) (*tls.Config, error) {
	creds := req.GetServerCreds()
	cert, err := tls.X509KeyPair(creds.GetCert(), creds.GetKey())
	if err != nil {
		return nil, fmt.Errorf("server credentials: %w", err)
	}
	conf := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}, MinVersion: tls.VersionTLS12}
	if len(req.GetClientTlsCert()) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(req.GetClientTlsCert()) {
			return nil, errors.New("client certificate: no PEM certificate found")
		}
		conf.ClientCAs, conf.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return conf, nil
}

func (s *servers) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, srv := range s.running {
		_ = srv.Close()
	}
	s.running = nil
}

// control is the endpoint through which a server process started by the
// runner asks for a server: it posts the runner's ServerCompatRequest and
// gets the ServerCompatResponse to pass on.
func (s *servers) control(svc *service) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var req conformancev1.ServerCompatRequest
		if err := proto.Unmarshal(body, &req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		res, err := s.start(&req, svc)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		out, err := proto.Marshal(res)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Header().Set("Content-Length", strconv.Itoa(len(out)))
		_, _ = w.Write(out)
	})
}

// startControl serves the control endpoint on a loopback port.
func startControl(ctx context.Context, h http.Handler) (addr string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	go func() { _ = srv.Serve(ln) }()
	return ln.Addr().String(), func() { _ = srv.Close() }, nil
}
