// A WebSocket push server as the seed documents wrote it in Go: gorilla/websocket, a goroutine
// per connection (reading; echoing data frames) and a buffered channel per connection that a
// broadcast writes the shared message into, for ws-bench to measure beside ours. An admin port
// answers POST /broadcast and GET /conns in the shapes ws-bench reads. SO_REUSEPORT lets several
// processes share the port (a process may hold at most 20,000 files here).
//
// Usage: peer-gorilla --listen ADDR --admin ADDR
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

type hub struct {
	mu      sync.Mutex
	clients map[*client]struct{}
	seq     uint64
	closed  uint64
	dropped uint64
}

type client struct {
	conn *websocket.Conn
	// Broadcasts waiting for this connection's writer; a connection 64 behind skips (counted).
	send chan *websocket.PreparedMessage
	// One writer at a time: the echo and the broadcast writer share the connection.
	mu sync.Mutex
}

// 1 KiB buffers (gorilla's default is 4 KiB), the write buffer from a pool so that an idle
// connection holds none, as gorilla's documentation suggests for many connections; any Origin
// is accepted, as the other servers under test do.
var upgrader = websocket.Upgrader{
	ReadBufferSize:  1024,
	WriteBufferSize: 1024,
	WriteBufferPool: &sync.Pool{},
	CheckOrigin:     func(*http.Request) bool { return true },
}

func (h *hub) serveWS(w http.ResponseWriter, r *http.Request) {
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	c := &client{conn: conn, send: make(chan *websocket.PreparedMessage, 64)}
	h.mu.Lock()
	h.clients[c] = struct{}{}
	h.mu.Unlock()
	go c.write()
	for {
		kind, data, err := conn.ReadMessage()
		if err != nil {
			break
		}
		// Echo data frames (data rounds); pings are answered by gorilla's default handler.
		if err := c.echo(kind, data); err != nil {
			break
		}
	}
	h.mu.Lock()
	delete(h.clients, c)
	h.closed++
	h.mu.Unlock()
	close(c.send)
	conn.Close()
}

func (c *client) echo(kind int, data []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn.WriteMessage(kind, data)
}

func (c *client) write() {
	for msg := range c.send {
		c.mu.Lock()
		err := c.conn.WritePreparedMessage(msg)
		c.mu.Unlock()
		if err != nil {
			c.conn.Close()
			for range c.send {
			}
			return
		}
	}
}

func (h *hub) broadcast(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, `{"error":"POST only"}`, http.StatusMethodNotAllowed)
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	started := time.Now()
	ts := time.Now().UnixNano()
	data := string(body)
	if data == "" {
		data = fmt.Sprintf("server time %d", ts)
	}
	quoted, _ := json.Marshal(data)
	h.mu.Lock()
	h.seq++
	seq := h.seq
	text := fmt.Sprintf(`{"ts":%d,"seq":%d,"kind":"broadcast","data":%s}`, ts, seq, quoted)
	// Framed once, written to every connection.
	msg, _ := websocket.NewPreparedMessage(websocket.TextMessage, []byte(text))
	n := 0
	for c := range h.clients {
		select {
		case c.send <- msg:
			n++
		default:
			h.dropped++
		}
	}
	h.mu.Unlock()
	ms := float64(time.Since(started).Microseconds()) / 1000
	fmt.Fprintf(w, `{"seq":%d,"queued":%d,"websockets":%d,"polls":0,"payload_bytes":%d,"fanout_ms":%f,"elapsed_ms":%f}`,
		seq, n, n, len(text), ms, ms)
}

func (h *hub) conns(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	defer h.mu.Unlock()
	fmt.Fprintf(w, `{"conns":%d,"closed":%d,"dropped":%d}`, len(h.clients), h.closed, h.dropped)
}

func main() {
	listen := flag.String("listen", "", "WebSocket address")
	admin := flag.String("admin", "", "admin address")
	flag.Parse()
	if *listen == "" || *admin == "" {
		log.Fatal("usage: peer-gorilla --listen ADDR --admin ADDR")
	}
	h := &hub{clients: map[*client]struct{}{}}
	reuse := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, 0xf /* SO_REUSEPORT */, 1)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	ln, err := reuse.Listen(context.Background(), "tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	wsMux := http.NewServeMux()
	wsMux.HandleFunc("/ws", h.serveWS)
	adminMux := http.NewServeMux()
	adminMux.HandleFunc("/broadcast", h.broadcast)
	adminMux.HandleFunc("/conns", h.conns)
	go func() { log.Fatal(http.ListenAndServe(*admin, adminMux)) }()
	log.Printf("peer-gorilla: WebSocket on %s, admin on %s", *listen, *admin)
	log.Fatal(http.Serve(ln, wsMux))
}
