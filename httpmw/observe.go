package httpmw

import "net/http"

// routeOf names a request's route for metrics and traces, as
// [idempotency.Request.Pattern] does: the pattern that matched it, or its
// method; never its path, which may hold IDs.
func routeOf(r *http.Request) string {
	if r.Pattern != "" {
		return r.Pattern
	}
	return r.Method
}
