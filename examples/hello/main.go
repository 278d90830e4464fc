// Command hello is drover's bundled example app: a small web service with a
// health endpoint, deployed by `drover demo` (README's first command).
//
// It serves the listening socket drover (or systemd) passes it in the
// socket activation protocol (LISTEN_FDS, LISTEN_PID), which a service with
// `socket: true` gets, and otherwise listens on --addr:--port itself
// (127.0.0.1 unless --addr says otherwise).
// On SIGTERM it stops accepting, answers every request it accepted, then
// exits; with an inherited socket the next release accepts meanwhile.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"
)

func main() {
	port := flag.Int("port", 8000, "port to listen on when no socket is passed in LISTEN_FDS")
	addr := flag.String("addr", "127.0.0.1", "address to listen on when no socket is passed in LISTEN_FDS (0.0.0.0: every interface, for a load balancer on another machine)")
	flag.Parse()
	release := os.Getenv("DROVER_RELEASE")
	started := time.Now()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "hello from drover's example app\nrelease: %s\npid: %d\nup: %s\n", release, os.Getpid(), time.Since(started).Round(time.Second))
	})
	ln, how, err := listen(*addr, *port)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	busy := trackBusy(srv)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		ln.Close() // stop accepting
	}()
	log.Printf("hello %s listening on %s (%s)", release, ln.Addr(), how)
	if err := srv.Serve(ln); ctx.Err() == nil {
		log.Fatal(err)
	}
	// Serve has returned, so every connection it accepted is tracked. Answer
	// them before Shutdown, which would drop a request not yet read on a
	// connection accepted just before it.
	deadline := time.Now().Add(10 * time.Second)
	for busy() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdown)
	log.Printf("hello %s stopped", release)
}

// listen returns the socket passed in the socket activation protocol when
// there is one for this process, or listens on addr:port.
func listen(addr string, port int) (net.Listener, string, error) {
	if os.Getenv("LISTEN_PID") == strconv.Itoa(os.Getpid()) {
		if n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS")); n >= 1 {
			for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
				os.Unsetenv(v) // not for child processes
			}
			f := os.NewFile(3, "LISTEN_FDS") // SD_LISTEN_FDS_START
			defer f.Close()
			ln, err := net.FileListener(f)
			if err != nil {
				return nil, "", fmt.Errorf("inherited socket (LISTEN_FDS): %w", err)
			}
			return ln, "socket passed by drover", nil
		}
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(addr, strconv.Itoa(port)))
	return ln, "own socket", err
}

// trackBusy counts the connections of srv that are new or serving a request.
func trackBusy(srv *http.Server) func() int {
	var mu sync.Mutex
	busy := map[net.Conn]bool{}
	srv.ConnState = func(c net.Conn, s http.ConnState) {
		mu.Lock()
		defer mu.Unlock()
		if s == http.StateNew || s == http.StateActive {
			busy[c] = true
		} else {
			delete(busy, c)
		}
	}
	return func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(busy)
	}
}
