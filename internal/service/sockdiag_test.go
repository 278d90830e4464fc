package service

import (
	"net"
	"os"
	"strconv"
	"testing"
)

// TestServerInode checks the sock_diag lookup against a connection this
// process accepts: it finds the accepted socket, not the listener nor the
// client's end.
func TestServerInode(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ino, err := serverInode(c.RemoteAddr().(*net.TCPAddr), c.LocalAddr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	f, err := s.(*net.TCPConn).File() // a dup of the same socket
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(f.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	if want := "socket:[" + strconv.FormatUint(ino, 10) + "]"; link != want {
		t.Errorf("serverInode found %s; the accepted socket is %s", want, link)
	}

	// A connection that does not exist is not found (the kernel would
	// answer with the listener).
	if ino, err := serverInode(ln.Addr().(*net.TCPAddr), &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}); err == nil && ino != 0 {
		t.Errorf("found inode %d for a connection that does not exist", ino)
	}
}
