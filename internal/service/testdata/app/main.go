// Command app is the web app the service tests start: it listens on $PORT
// and answers /healthz with 200, or 500 when APP_UNHEALTHY=1 or the file
// named by APP_UNHEALTHY_FILE exists. It exits on SIGTERM, unless
// APP_IGNORE_TERM=1. APP_BOOT_DELAY (a duration) delays listening, like an
// app that boots slowly.
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
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
	ln, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(2)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		_, statErr := os.Stat(os.Getenv("APP_UNHEALTHY_FILE"))
		if os.Getenv("APP_UNHEALTHY") == "1" || (os.Getenv("APP_UNHEALTHY_FILE") != "" && statErr == nil) {
			http.Error(w, "database unreachable", http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/whoami", func(w http.ResponseWriter, r *http.Request) {
		wd, _ := os.Getwd()
		fmt.Fprintf(w, "%d %s %s\n", os.Getpid(), wd, os.Getenv("DROVER_RELEASE"))
	})
	srv := &http.Server{Handler: mux}
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
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
	fmt.Printf("app %d stopped\n", os.Getpid())
}
