// Package hostile holds no code, only tests: the strange and malicious
// requests, stored records and client behaviour that the library must
// survive, run through both adapters (the net/http middleware of package
// httpmw and the Connect interceptor) against a real Redis, and the
// security properties that users of the library rely on: tenants isolated
// by a scope, credentials never replayed, raw keys never stored or logged.
//
// Each case of the hostile-input table says what it expects and which
// section of the behaviour contract demands it.
package hostile
