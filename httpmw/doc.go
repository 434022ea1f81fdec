// Package httpmw makes net/http handlers idempotent. [New] returns a
// middleware over an [idempotency.Store]: the first request with a key
// runs the handler, and a retry with the same key gets the stored response
// back, marked Idempotent-Replayed: true, without running the handler
// again. It is a thin adapter over [idempotency.Engine], and takes the
// same options.
//
// # Which requests it guards
//
// A request is guarded when its method is one of the applicable methods
// (POST and PATCH by default, see [idempotency.WithApplicableMethods]) and
// it carries a non-blank key header. Anything else goes to the handler
// untouched, without a store call; with [idempotency.WithRequireKey], a
// guarded method without a key is answered 400 instead. A key is named by
// the scope ([idempotency.WithKeyScope]), the route (the method and the
// escaped path) and the key, so equal keys on different endpoints or for
// different callers never meet.
//
// The request body is read, up to [idempotency.WithMaxBodySize], before
// the store is asked: it is part of the payload fingerprint, with the
// method, the escaped path and the raw query. A larger body is answered
// 413 and nothing else happens. The handler then reads the body byte for
// byte as the client sent it.
//
// # What is stored
//
// The handler writes into a buffer; when it returns, the response is
// stored and the claim ends in one store call, and only then does the
// client get the response, so a retry sent right after the answer finds the
// record. Stored are: the status, the body bytes exactly as written, and
// the allowlisted headers ([idempotency.WithStoredHeaders]). Set-Cookie,
// Authorization and hop-by-hop headers are never stored nor replayed, even
// when allowlisted. Content-Length is not stored: net/http computes it on
// replay.
//
// A response is stored when it has no body at all (a 204, a 201 or 202
// without body, a redirect), when its Content-Type is application/json or
// any +json type (parameters such as charset allowed) and its body parses
// as JSON, or when it has no Content-Type and its body parses as JSON. A
// JSON body with a Content-Encoding such as gzip is stored byte for byte,
// unchecked, with its Content-Encoding, kept even when the allowlist
// leaves it out. Anything else (HTML, text, invalid JSON, an encoded body
// without a Content-Type) reaches the client unchanged, nothing is stored,
// and the claim is released so that a retry runs the handler again.
// [idempotency.WithStorePolicy] can narrow what is stored by status.
//
// net/http gives a body without a Content-Type the type it sniffs from its
// first bytes: "text/plain; charset=utf-8" for JSON. The middleware sets
// that same type on a stored untyped body itself, and stores it whatever
// the allowlist, so that the first answer and every replay carry the same
// Content-Type; where net/http would not sniff (a Content-Encoding is set,
// or the handler set an empty Content-Type), neither answer has one.
//
// The response still reaches the client but is not stored, and the claim
// is released, when the handler panics (the panic goes on, after the
// release), flushes, hijacks the connection, writes more than
// [idempotency.WithMaxResponseSize], or returns without writing anything
// because its request's context ended. A handler that finishes its
// response after its client went away is stored: that client's retry is
// how the library is meant to be used.
//
// A guarded response that is not stored is logged at Warn (see
// [idempotency.WithLogger]) with the reason, the route and a prefix of
// the storage key's hash, never the key, so that an endpoint the
// middleware cannot protect does not look protected. Each route and reason
// is logged on its first occurrence, then at most once a minute, with the
// number of occurrences left out since ("suppressed"); beyond 1024 routes
// at once, routes share one count, logged as "(other routes)".
//
// The response writer the handler gets implements [http.Flusher],
// [http.Hijacker] and Unwrap, so [http.ResponseController] works through
// it. Informational responses (1xx, as WriteHeader(103)) go to the client
// at once.
//
// # Connect, gRPC and gRPC-Web
//
// In front of a Connect handler, the middleware answers a Connect unary
// JSON request like any JSON request: its response is stored and replayed
// (its Trailer- headers are not in the default allowlist, so a replay
// carries none). A Connect binary response (application/proto) is not
// JSON and is not stored. gRPC, gRPC-Web and Connect streaming requests
// are guarded while they run (a duplicate is answered "in flight"), but
// their responses, streams of enveloped messages that end in trailers,
// pass through as the handler writes them and are never stored: a retry
// runs the handler again, which the log says. Their bodies are not read
// ahead (a client stream starts at once; the body size limit does not
// apply), and a key that holds a record, stored for a request in another
// protocol, is answered as a mismatch. To make such a handler
// idempotent on every protocol, use [idempotency.NewInterceptor] on it.
//
// Its own errors reach those clients in their protocol, as
// [connect.NewErrorWriter] writes them, with the codes of
// [idempotency.CodeOf] and the [idempotency.StatusHeader] and Retry-After
// metadata that the interceptor sets, so that
// [idempotency.NewClientInterceptor] recognises them; the message is the
// problem's detail below. A request is a gRPC or gRPC-Web one by its
// Content-Type (application/grpc, application/grpc-web, with a +codec),
// and a Connect one by its Content-Type together with the
// Connect-Protocol-Version: 1 header that every Connect client sends: a
// REST client posting application/json without that header gets a
// problem document.
//
//	error                      Connect code        Idempotency-Status
//	key required, invalid key  invalid_argument    invalid-key
//	payload mismatch           invalid_argument    mismatch
//	in flight                  aborted             in-flight, and Retry-After
//	body too large             resource_exhausted  body-too-large
//	store unavailable          unavailable         store-unavailable
//	body unreadable            invalid_argument    (none)
//
// # Errors
//
// The middleware answers its own errors with an RFC 9457 problem document
// (Content-Type application/problem+json, with type, title, status and
// detail) and the [idempotency.StatusHeader] header. Each type is
// https://github.com/idemkey/idempotency followed by the fragment below:
//
//	status  type                Idempotency-Status  when
//	400     #key-required       invalid-key         no key, under WithRequireKey
//	409     #in-flight          in-flight           the key is in flight; with Retry-After
//	413     #body-too-large     body-too-large      the request body is over the limit
//	422     #invalid-key        invalid-key         a malformed key, or not a v4 UUID
//	422     #mismatch           mismatch            the key was used with another payload
//	503     #store-unavailable  store-unavailable   the store failed; the handler did not run
//
// A request body that cannot be read is answered 400 with the type
// #body-unreadable and no Idempotency-Status. The errors are the sentinels
// of package idempotency, such as [idempotency.ErrInFlight]; the status,
// the label and the title come from [idempotency.StatusOf].
//
// # What the handler must not do
//
// As net/http requires, the handler must not use its response writer or
// read its request body after it returns. The middleware reuses their
// buffers for later requests, so both refuse any use once the handler has
// returned: a write fails and a read finds the end of the body.
package httpmw
