// Command app is the web app the service tests start: it listens on $PORT
// and answers /healthz with 200, or 500 when APP_UNHEALTHY=1 or the file
// named by APP_UNHEALTHY_FILE exists. It exits on SIGTERM, unless
// APP_IGNORE_TERM=1. APP_BOOT_DELAY (a duration) delays listening, like an
// app that boots slowly. It serves the socket drover passes in LISTEN_FDS
// (socket activation) when there is one, and exits with status 3 at once
// when the file named by APP_EXIT_IF exists (relative to its working dir:
// a broken release). With APP_REUSE_PORT=1 it binds its port with
// SO_REUSEPORT. When the file named by APP_CRASH_IF exists, it exits 300ms
// after it first answers /healthz (healthy, then not).
package main

import (
	"context"
	"fmt"
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
	port := os.Getenv("PORT")
	fmt.Printf("app %d starting on port %s\n", os.Getpid(), port)
	if os.Getenv("APP_IGNORE_TERM") == "1" {
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ignoring SIGTERM")
	}
	if d, err := time.ParseDuration(os.Getenv("APP_BOOT_DELAY")); err == nil {
		time.Sleep(d) // simulates a slow boot; the test waits on the health check
	}
	if name := os.Getenv("APP_EXIT_IF"); name != "" {
		if _, err := os.Stat(name); err == nil {
			fmt.Fprintf(os.Stderr, "app %d: %s exists, exiting\n", os.Getpid(), name)
			os.Exit(3)
		}
	}
	ln, err := inherited()
	if ln == nil && err == nil {
		var lc net.ListenConfig
		if os.Getenv("APP_REUSE_PORT") == "1" {
			lc.Control = func(_, _ string, c syscall.RawConn) error {
				return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, 0xf /* SO_REUSEPORT */, 1) })
			}
		}
		ln, err = lc.Listen(context.Background(), "tcp", "127.0.0.1:"+port)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(2)
	}
	var crash sync.Once
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		_, statErr := os.Stat(os.Getenv("APP_UNHEALTHY_FILE"))
		if os.Getenv("APP_UNHEALTHY") == "1" || (os.Getenv("APP_UNHEALTHY_FILE") != "" && statErr == nil) {
			http.Error(w, "database unreachable", http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
		if name := os.Getenv("APP_CRASH_IF"); name != "" {
			if _, err := os.Stat(name); err == nil {
				crash.Do(func() {
					time.AfterFunc(300*time.Millisecond, func() {
						fmt.Fprintf(os.Stderr, "app %d: %s exists, crashing after its first health check\n", os.Getpid(), name)
						os.Exit(4)
					})
				})
			}
		}
	})
	mux.HandleFunc("/whoami", func(w http.ResponseWriter, r *http.Request) {
		wd, _ := os.Getwd()
		fmt.Fprintf(w, "%d %s %s\n", os.Getpid(), wd, os.Getenv("DROVER_RELEASE"))
	})
	srv := &http.Server{Handler: mux}
	busy := trackBusy(srv)
	fmt.Printf("app %d listening on %s\n", os.Getpid(), ln.Addr())

	sigs := []os.Signal{syscall.SIGINT}
	if os.Getenv("APP_IGNORE_TERM") != "1" {
		sigs = append(sigs, syscall.SIGTERM)
	}
	ctx, stop := signal.NotifyContext(context.Background(), sigs...)
	defer stop()
	go func() {
		<-ctx.Done()
		fmt.Printf("app %d stopping\n", os.Getpid())
		ln.Close() // stop accepting; a held socket keeps queueing for the next process
	}()
	if err := srv.Serve(ln); ctx.Err() == nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
	// Serve has returned, so every connection it accepted is tracked.
	// Answer them before Shutdown, which drops a request not yet read on a
	// connection accepted just before it.
	deadline := time.Now().Add(5 * time.Second)
	for busy() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	fmt.Printf("app %d stopped\n", os.Getpid())
}

// inherited returns the socket passed as fd 3 in the systemd protocol, or
// nil when none was passed to this process.
func inherited() (net.Listener, error) {
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) || os.Getenv("LISTEN_FDS") != "1" {
		return nil, nil
	}
	f := os.NewFile(3, os.Getenv("LISTEN_FDNAMES"))
	defer f.Close()
	return net.FileListener(f)
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
