// goleak: stackleak.c's twin in Go, for tcptrace's stack tests: a Go binary
// keeps frame pointers on amd64 by default, so its connect() stacks name Go
// functions (main.checkoutReserveItems). Built by the test with `go build`.
// Usage: goleak PORT N_LEAKED N_CLOSED
// Dials N_LEAKED times from checkoutReserveItems (never closes: the peer
// closes at once, so they sit in CLOSE_WAIT) and N_CLOSED times from
// refreshInventoryCache (reads EOF, closes), prints "ready <pid>", then
// waits until stdin closes (or it is killed) holding the leaked conns.
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
)

var held []net.Conn

func must(c net.Conn, err error) net.Conn {
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(1)
	}
	return c
}

// The leak: the connection is kept "for later" and never closed. net.Dial
// is called here, not through a helper of this program: the stack's first
// frame that is not Go's runtime or net code names the code path.
//
//go:noinline
func checkoutReserveItems(port, n int) {
	for i := 0; i < n; i++ {
		held = append(held, must(net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))))
	}
}

// The healthy path: read until the peer closes, then close.
//
//go:noinline
func refreshInventoryCache(port, n int) {
	for i := 0; i < n; i++ {
		c := must(net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port)))
		_, _ = io.Copy(io.Discard, c)
		_ = c.Close()
	}
}

//go:noinline
func handleOrder(port, n int) { checkoutReserveItems(port, n) }

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: goleak PORT N_LEAKED N_CLOSED")
		os.Exit(2)
	}
	port, _ := strconv.Atoi(os.Args[1])
	leaked, _ := strconv.Atoi(os.Args[2])
	closed, _ := strconv.Atoi(os.Args[3])
	handleOrder(port, leaked)
	refreshInventoryCache(port, closed)
	fmt.Printf("ready %d\n", os.Getpid())
	_, _ = io.Copy(io.Discard, os.Stdin)
}
