package grpcmw

import (
	"net/textproto"
	"strings"

	"github.com/idemkey/idempotency"
)

// gatewayPrefix is the prefix that grpc-gateway's usual matchers give the
// HTTP headers they forward as metadata (runtime.MetadataPrefix).
const gatewayPrefix = "grpcgateway-"

// GatewayIncomingHeaderMatcher returns an incoming header matcher for
// grpc-gateway (a runtime.HeaderMatcherFunc) that forwards the
// Idempotency-Key header, which the gateway's default matcher drops, as the
// metadata idempotency-key, and hands every other header to next:
//
//	mux := runtime.NewServeMux(
//		runtime.WithIncomingHeaderMatcher(grpcmw.GatewayIncomingHeaderMatcher(runtime.DefaultHeaderMatcher)),
//		runtime.WithOutgoingHeaderMatcher(grpcmw.GatewayOutgoingHeaderMatcher(nil)),
//	)
//
// A matcher of one's own that forwards every header with the gateway's
// prefix works too: the server also reads grpcgateway-idempotency-key. For
// a key header renamed with [idempotency.WithIdempotencyHeader], forward
// that header instead. A nil next drops every other header.
func GatewayIncomingHeaderMatcher(next func(string) (string, bool)) func(string) (string, bool) {
	return func(key string) (string, bool) {
		if textproto.CanonicalMIMEHeaderKey(key) == idempotency.DefaultIdempotencyHeader {
			return strings.ToLower(idempotency.DefaultIdempotencyHeader), true
		}
		if next == nil {
			return "", false
		}
		return next(key)
	}
}

// GatewayOutgoingHeaderMatcher returns an outgoing header matcher for
// grpc-gateway (a runtime.HeaderMatcherFunc) that gives the REST client the
// replay marker (Idempotent-Replayed), the library's status
// (Idempotency-Status) and its Retry-After hint as HTTP headers of those
// names (the default names: a replay header renamed with
// [idempotency.WithReplayHeader] needs a matcher of one's own), and hands
// every other header metadata key to next. A nil next does what the gateway
// does by default: it forwards the key with the Grpc-Metadata- prefix.
func GatewayOutgoingHeaderMatcher(next func(string) (string, bool)) func(string) (string, bool) {
	return func(key string) (string, bool) {
		switch name := textproto.CanonicalMIMEHeaderKey(key); name {
		case idempotency.DefaultReplayHeader, idempotency.StatusHeader, retryAfterHeader:
			return name, true
		}
		if next == nil {
			return "Grpc-Metadata-" + key, true
		}
		return next(key)
	}
}
