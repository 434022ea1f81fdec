// Package integration holds end-to-end tests of the library: the
// middleware and the Connect interceptor, several instances of them in one
// test, each with a Redis client and store of its own, on real redis-server
// processes and a real three-master Redis Cluster, with faults in between
// (Redis stopped, a holder cut off from Redis by a proxy).
//
// The package has no code of its own: everything is in its tests. They
// show that a handler runs once however many duplicates reach however many
// instances, what each request costs in Redis round trips, that records
// expire by Redis's clock, how the library behaves while Redis is away and
// after it returns, and how long a waiting duplicate takes to be answered.
// Without redis-server on the machine, the tests skip, as package
// redistest describes.
package integration
