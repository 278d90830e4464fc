package ssh_test

import (
	"io"
	"net"
	"os"
	"testing"
)

// TestMain lets the test binary serve as a ProxyCommand: with
// SSH_TEST_RELAY=host:port it relays its stdio to that address.
func TestMain(m *testing.M) {
	if addr := os.Getenv("SSH_TEST_RELAY"); addr != "" {
		os.Exit(relay(addr))
	}
	os.Exit(m.Run())
}

func relay(addr string) int {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		return 1
	}
	go func() {
		_, _ = io.Copy(conn, os.Stdin)
		conn.(*net.TCPConn).CloseWrite()
	}()
	_, _ = io.Copy(os.Stdout, conn)
	return 0
}
