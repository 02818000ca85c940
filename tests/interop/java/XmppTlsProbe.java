import javax.net.ssl.*;
import java.io.*;
import java.net.*;
import java.nio.ByteBuffer;
import java.nio.channels.*;
import java.nio.charset.StandardCharsets;
import java.security.cert.X509Certificate;
import java.util.*;
import java.util.concurrent.*;
import java.util.concurrent.atomic.*;
import java.util.regex.*;

/**
 * Mimics a Smack-like XMPP client login (STARTTLS, SASL PLAIN, bind, ping) over
 *   nio      : SocketChannel + SSLEngine driven by a Selector, careful wrap/unwrap loop
 *              (loops unwrap while input remains, like Smack's TlsState.input()).
 *   naive    : same, but the post-handshake read path stops unwrapping as soon as an
 *              unwrap yields zero application bytes ("0 bytes => wait for the network").
 *   naive1   : same, but one unwrap per socket read (leftover records wait for the next read).
 *   blocking : plain blocking SSLSocket.
 *
 * usage: java XmppTlsProbe MODE PORT CONNS WORKERS USER PASS [freshctx]
 */
public class XmppTlsProbe {
    static final String HDR = "<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
            + "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";
    static final long STEP_MS = 5000;

    static class Stall extends Exception { final String step; Stall(String s) { super("stall at " + s); step = s; } }

    // ---- global stats ----
    static final ConcurrentHashMap<String, AtomicLong> counters = new ConcurrentHashMap<>();
    static void inc(String k) { counters.computeIfAbsent(k, x -> new AtomicLong()).incrementAndGet(); }
    static void add(String k, long v) { counters.computeIfAbsent(k, x -> new AtomicLong()).addAndGet(v); }
    static final AtomicInteger trustCalls = new AtomicInteger();
    static volatile boolean verbose = false;

    static SSLContext makeCtx() throws Exception {
        TrustManager tm = new X509TrustManager() {
            public void checkClientTrusted(X509Certificate[] c, String a) {}
            public void checkServerTrusted(X509Certificate[] c, String a) { trustCalls.incrementAndGet(); }
            public X509Certificate[] getAcceptedIssuers() { return new X509Certificate[0]; }
        };
        SSLContext ctx = SSLContext.getInstance("TLSv1.3");
        ctx.init(null, new TrustManager[]{tm}, null);
        return ctx;
    }

    // ======================= NIO / SSLEngine client =======================
    static class NioConn {
        final String mode; final SSLContext ctx; final int port;
        SocketChannel ch; Selector sel; SSLEngine eng;
        ByteBuffer netIn, appIn, netOut;
        final StringBuilder text = new StringBuilder();
        boolean hsDone = false; boolean eof = false;
        String step = "connect";
        long deadline;

        NioConn(String mode, SSLContext ctx, int port) { this.mode = mode; this.ctx = ctx; this.port = port; }

        void stepStart(String s) { step = s; deadline = System.currentTimeMillis() + STEP_MS; }
        long remaining() throws Stall {
            long r = deadline - System.currentTimeMillis();
            if (r <= 0) throw new Stall(step);
            return r;
        }

        void connect() throws Exception {
            stepStart("connect");
            ch = SocketChannel.open();
            ch.configureBlocking(false);
            sel = Selector.open();
            ch.connect(new InetSocketAddress("127.0.0.1", port));
            SelectionKey k = ch.register(sel, SelectionKey.OP_CONNECT);
            while (!ch.finishConnect()) { sel.select(remaining()); sel.selectedKeys().clear(); }
            k.interestOps(0);
            netIn = ByteBuffer.allocate(32768);
        }

        // write all of buf, non-blocking with selector
        void flush(ByteBuffer buf) throws Exception {
            SelectionKey k = ch.keyFor(sel);
            while (buf.hasRemaining()) {
                int n = ch.write(buf);
                if (n == 0) {
                    k.interestOps(SelectionKey.OP_WRITE);
                    sel.select(remaining()); sel.selectedKeys().clear();
                    k.interestOps(0);
                }
            }
        }

        void send(String s) throws Exception {
            ByteBuffer src = ByteBuffer.wrap(s.getBytes(StandardCharsets.UTF_8));
            if (eng == null) { flush(src); return; }
            do {
                netOut.clear();
                SSLEngineResult r = eng.wrap(src, netOut);
                switch (r.getStatus()) {
                    case OK: netOut.flip(); flush(netOut); break;
                    case BUFFER_OVERFLOW:
                        netOut = ByteBuffer.allocate(netOut.capacity() * 2); inc("wrap_overflow"); continue;
                    case CLOSED: throw new IOException("engine closed on wrap");
                    default: throw new IOException("wrap " + r);
                }
                if (r.getHandshakeStatus() == SSLEngineResult.HandshakeStatus.NEED_TASK) runTasks();
            } while (src.hasRemaining());
        }

        void runTasks() { Runnable t; while ((t = eng.getDelegatedTask()) != null) { t.run(); inc("tasks"); } }

        // read once from the socket (waits for readability). returns bytes read
        int readSocket() throws Exception {
            SelectionKey k = ch.keyFor(sel);
            k.interestOps(SelectionKey.OP_READ);
            while (true) {
                int n = ch.read(netIn);
                if (n < 0) { eof = true; throw new IOException("EOF at " + step); }
                if (n > 0) { k.interestOps(0); add("socket_reads", 1); return n; }
                if (!netIn.hasRemaining()) { // enlarge
                    ByteBuffer b = ByteBuffer.allocate(netIn.capacity() * 2); netIn.flip(); b.put(netIn); netIn = b; continue;
                }
                sel.select(remaining()); sel.selectedKeys().clear();
            }
        }

        void drainApp() {
            appIn.flip();
            if (appIn.hasRemaining()) text.append(StandardCharsets.UTF_8.decode(appIn));
            appIn.clear();
        }

        void noteUnwrap(SSLEngineResult r) {
            if (hsDone) {
                inc("post_hs_unwraps");
                if (r.getStatus() == SSLEngineResult.Status.OK && r.bytesConsumed() > 0 && r.bytesProduced() == 0) {
                    inc("post_hs_zero_app_unwraps");
                    inc("post_hs_zero_app_unwraps[hs=" + r.getHandshakeStatus() + ",after=" + eng.getHandshakeStatus() + "]");
                    if (verbose) System.err.println("  zero-app unwrap at step " + step + ": " + r.toString().replace('\n', ' ') + " remainingInBuf=" + netIn.remaining());
                }
            }
        }

        /** Unwrap what's in netIn (write mode on entry/exit). Returns true if anything happened. */
        void processIncoming() throws Exception {
            netIn.flip();
            try {
                boolean naive = mode.equals("naive"), naive1 = mode.equals("naive1");
                int unwraps = 0;
                while (netIn.hasRemaining()) {
                    SSLEngineResult r = eng.unwrap(netIn, appIn);
                    unwraps++;
                    noteUnwrap(r);
                    switch (r.getStatus()) {
                        case OK: break;
                        case BUFFER_UNDERFLOW:
                            inc("unwrap_underflow");
                            if (netIn.capacity() < eng.getSession().getPacketBufferSize()) {
                                ByteBuffer b = ByteBuffer.allocate(eng.getSession().getPacketBufferSize()); b.put(netIn); b.flip(); netIn = b;
                            }
                            return;
                        case BUFFER_OVERFLOW:
                            inc("unwrap_overflow");
                            drainApp();
                            if (appIn.capacity() < eng.getSession().getApplicationBufferSize())
                                appIn = ByteBuffer.allocate(eng.getSession().getApplicationBufferSize());
                            continue;
                        case CLOSED:
                            inc("unwrap_closed"); eof = true; return;
                    }
                    drainApp();
                    switch (r.getHandshakeStatus()) {
                        case NEED_TASK: inc("post_hs_need_task"); runTasks(); break;
                        case NEED_WRAP: {
                            inc("post_hs_need_wrap");
                            // e.g. KeyUpdate response; produce and send
                            ByteBuffer empty = ByteBuffer.allocate(0);
                            netOut.clear(); SSLEngineResult w = eng.wrap(empty, netOut); netOut.flip(); flush(netOut);
                            break;
                        }
                        case NEED_UNWRAP: inc("post_hs_need_unwrap"); break;
                        default: break;
                    }
                    if (naive1) { if (netIn.hasRemaining()) inc("naive_left_bytes_behind"); return; }
                    if (naive && r.bytesProduced() == 0) { if (netIn.hasRemaining()) inc("naive_left_bytes_behind"); return; }
                }
            } finally {
                netIn.compact();
            }
        }

        void waitFor(Pattern p, String stepName) throws Exception {
            stepStart(stepName);
            while (true) {
                Matcher m = p.matcher(text);
                if (m.find()) { text.delete(0, m.end()); return; }
                if (eof) throw new IOException("EOF while waiting at " + step + " text=" + text);
                remaining();
                readSocket();
                if (eng == null) {
                    netIn.flip(); text.append(StandardCharsets.UTF_8.decode(netIn)); netIn.clear();
                } else {
                    processIncoming();
                }
                if (text.indexOf("<failure") >= 0 || text.indexOf("<stream:error") >= 0 || text.indexOf("type='error'") >= 0 || text.indexOf("type=\"error\"") >= 0)
                    throw new IOException("server error at " + step + ": " + text);
            }
        }

        void handshake() throws Exception {
            stepStart("tls-handshake");
            eng = ctx.createSSLEngine("localhost", port); // host+port: allows resumption, like Smack
            eng.setUseClientMode(true);
            eng.setEnabledProtocols(new String[]{"TLSv1.3"});
            SSLSession s = eng.getSession();
            appIn = ByteBuffer.allocate(s.getApplicationBufferSize());
            netOut = ByteBuffer.allocate(s.getPacketBufferSize());
            if (netIn.capacity() < s.getPacketBufferSize()) netIn = ByteBuffer.allocate(s.getPacketBufferSize());
            eng.beginHandshake();
            SSLEngineResult.HandshakeStatus hs = eng.getHandshakeStatus();
            ByteBuffer empty = ByteBuffer.allocate(0);
            int iter = 0;
            while (true) {
                if (++iter > 10000) throw new IOException("handshake loop runaway");
                remaining();
                switch (hs) {
                    case NEED_WRAP: {
                        netOut.clear();
                        SSLEngineResult r = eng.wrap(empty, netOut);
                        if (r.getStatus() == SSLEngineResult.Status.BUFFER_OVERFLOW) { netOut = ByteBuffer.allocate(netOut.capacity() * 2); hs = eng.getHandshakeStatus(); continue; }
                        if (r.getStatus() == SSLEngineResult.Status.CLOSED) throw new IOException("closed during handshake wrap");
                        netOut.flip(); flush(netOut);
                        hs = r.getHandshakeStatus();
                        break;
                    }
                    case NEED_UNWRAP:
                    case NEED_UNWRAP_AGAIN: {
                        if (hs == SSLEngineResult.HandshakeStatus.NEED_UNWRAP && netIn.position() == 0) readSocket();
                        netIn.flip();
                        SSLEngineResult r = eng.unwrap(netIn, appIn);
                        netIn.compact();
                        switch (r.getStatus()) {
                            case BUFFER_UNDERFLOW:
                                if (netIn.capacity() < eng.getSession().getPacketBufferSize()) {
                                    ByteBuffer b = ByteBuffer.allocate(eng.getSession().getPacketBufferSize()); netIn.flip(); b.put(netIn); netIn = b;
                                }
                                readSocket(); hs = eng.getHandshakeStatus(); continue;
                            case BUFFER_OVERFLOW:
                                drainApp(); appIn = ByteBuffer.allocate(Math.max(appIn.capacity(), eng.getSession().getApplicationBufferSize())); hs = eng.getHandshakeStatus(); continue;
                            case CLOSED: throw new IOException("closed during handshake unwrap");
                            default: break;
                        }
                        drainApp();
                        hs = r.getHandshakeStatus();
                        break;
                    }
                    case NEED_TASK: runTasks(); hs = eng.getHandshakeStatus(); break;
                    case FINISHED:
                    case NOT_HANDSHAKING:
                        hsDone = true;
                        inc("handshake_leftover_bytes_" + (netIn.position() > 0 ? "yes" : "no"));
                        // a careful client processes any records that arrived together with the last flight
                        if (netIn.position() > 0 && !mode.startsWith("naive")) processIncoming();
                        return;
                }
            }
        }

        void run(String user, String pass) throws Exception {
            connect();
            stepStart("stream-header"); send(HDR);
            waitFor(Pattern.compile("</stream:features>"), "features1");
            stepStart("starttls"); send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
            waitFor(Pattern.compile("<proceed[^>]*>"), "proceed");
            if (netIn.position() != 0) throw new IOException("unexpected bytes after proceed");
            handshake();
            stepStart("stream-header2"); send(HDR);
            waitFor(Pattern.compile("</stream:features>"), "features2");
            String b64 = Base64.getEncoder().encodeToString(("\0" + user + "\0" + pass).getBytes(StandardCharsets.UTF_8));
            stepStart("auth"); send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + b64 + "</auth>");
            waitFor(Pattern.compile("<success[^>]*>"), "success");
            stepStart("stream-header3"); send(HDR);
            waitFor(Pattern.compile("</stream:features>"), "features3");
            stepStart("bind"); send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>");
            waitFor(Pattern.compile("<iq[^>]*id=['\"]b1['\"][^>]*>.*?</iq>", Pattern.DOTALL), "bind-result");
            stepStart("ping"); send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>");
            waitFor(Pattern.compile("<iq[^>]*id=['\"]p1['\"][^>]*(/>|>.*?</iq>)", Pattern.DOTALL), "ping-result");
            stepStart("close");
            send("</stream:stream>");
            eng.closeOutbound();
            netOut.clear(); eng.wrap(ByteBuffer.allocate(0), netOut); netOut.flip(); flush(netOut);
        }

        void close() { try { if (sel != null) sel.close(); } catch (Exception e) {} try { if (ch != null) ch.close(); } catch (Exception e) {} }
    }

    // ======================= blocking SSLSocket client =======================
    static class BlockingConn {
        final SSLContext ctx; final int port; Socket raw; SSLSocket ssl; InputStream in; OutputStream out;
        final StringBuilder text = new StringBuilder(); String step = "connect"; long deadline;
        BlockingConn(SSLContext ctx, int port) { this.ctx = ctx; this.port = port; }
        void stepStart(String s) { step = s; deadline = System.currentTimeMillis() + STEP_MS; }
        void send(String s) throws IOException { out.write(s.getBytes(StandardCharsets.UTF_8)); out.flush(); }
        void waitFor(Pattern p, String stepName) throws Exception {
            stepStart(stepName);
            byte[] buf = new byte[16384];
            // decode incrementally; keep undecoded trailing bytes
            ByteArrayOutputStream pend = new ByteArrayOutputStream();
            while (true) {
                Matcher m = p.matcher(text);
                if (m.find()) { text.delete(0, m.end()); return; }
                long r = deadline - System.currentTimeMillis();
                if (r <= 0) throw new Stall(step);
                Socket s = ssl != null ? ssl : raw;
                s.setSoTimeout((int) Math.max(1, r));
                int n;
                try { n = in.read(buf); } catch (SocketTimeoutException e) { throw new Stall(step); }
                if (n < 0) throw new IOException("EOF at " + step + " text=" + text);
                text.append(new String(buf, 0, n, StandardCharsets.UTF_8));
                if (text.indexOf("<failure") >= 0 || text.indexOf("<stream:error") >= 0)
                    throw new IOException("server error at " + step + ": " + text);
            }
        }
        void run(String user, String pass) throws Exception {
            stepStart("connect");
            raw = new Socket(); raw.connect(new InetSocketAddress("127.0.0.1", port), (int) STEP_MS);
            in = raw.getInputStream(); out = raw.getOutputStream();
            send(HDR); waitFor(Pattern.compile("</stream:features>"), "features1");
            send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"); waitFor(Pattern.compile("<proceed[^>]*>"), "proceed");
            stepStart("tls-handshake");
            ssl = (SSLSocket) ctx.getSocketFactory().createSocket(raw, "localhost", port, true);
            ssl.setEnabledProtocols(new String[]{"TLSv1.3"});
            ssl.setSoTimeout((int) STEP_MS);
            try { ssl.startHandshake(); } catch (SocketTimeoutException e) { throw new Stall(step); }
            in = ssl.getInputStream(); out = ssl.getOutputStream();
            send(HDR); waitFor(Pattern.compile("</stream:features>"), "features2");
            String b64 = Base64.getEncoder().encodeToString(("\0" + user + "\0" + pass).getBytes(StandardCharsets.UTF_8));
            send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + b64 + "</auth>");
            waitFor(Pattern.compile("<success[^>]*>"), "success");
            send(HDR); waitFor(Pattern.compile("</stream:features>"), "features3");
            send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>");
            waitFor(Pattern.compile("<iq[^>]*id=['\"]b1['\"][^>]*>.*?</iq>", Pattern.DOTALL), "bind-result");
            send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>");
            waitFor(Pattern.compile("<iq[^>]*id=['\"]p1['\"][^>]*(/>|>.*?</iq>)", Pattern.DOTALL), "ping-result");
            stepStart("close");
            send("</stream:stream>");
        }
        void close() { try { if (ssl != null) ssl.close(); } catch (Exception e) {} try { raw.close(); } catch (Exception e) {} }
    }

    public static void main(String[] a) throws Exception {
        String mode = a[0]; int port = Integer.parseInt(a[1]); int conns = Integer.parseInt(a[2]); int workers = Integer.parseInt(a[3]);
        String user = a[4], pass = a[5];
        boolean fresh = a.length > 6 && a[6].equals("freshctx");
        verbose = System.getenv("PROBE_VERBOSE") != null;
        final SSLContext shared = makeCtx();
        ConcurrentHashMap<String, AtomicInteger> stalls = new ConcurrentHashMap<>();
        ConcurrentHashMap<String, AtomicInteger> errors = new ConcurrentHashMap<>();
        AtomicInteger ok = new AtomicInteger();
        List<Long> times = Collections.synchronizedList(new ArrayList<>());
        AtomicInteger resumedGuess = new AtomicInteger();
        long t0 = System.nanoTime();
        ExecutorService ex = Executors.newFixedThreadPool(workers);
        List<Future<?>> fs = new ArrayList<>();
        for (int w = 0; w < workers; w++) {
            fs.add(ex.submit(() -> {
                for (int i = 0; i < conns; i++) {
                    long s = System.nanoTime();
                    int tcBefore = -1;
                    try {
                        SSLContext ctx = fresh ? makeCtx() : shared;
                        if (mode.equals("blocking")) {
                            BlockingConn c = new BlockingConn(ctx, port);
                            try { c.run(user, pass); } finally { c.close(); }
                        } else {
                            NioConn c = new NioConn(mode, ctx, port);
                            try { c.run(user, pass); } finally { c.close(); }
                        }
                        ok.incrementAndGet();
                        times.add((System.nanoTime() - s) / 1000);
                    } catch (Stall st) {
                        stalls.computeIfAbsent(st.step, x -> new AtomicInteger()).incrementAndGet();
                    } catch (Throwable e) {
                        String k = e.getClass().getSimpleName() + ": " + String.valueOf(e.getMessage()).replaceAll("\\s+", " ");
                        if (k.length() > 160) k = k.substring(0, 160);
                        errors.computeIfAbsent(k, x -> new AtomicInteger()).incrementAndGet();
                    }
                }
                return null;
            }));
        }
        for (Future<?> f : fs) f.get();
        ex.shutdown();
        double wall = (System.nanoTime() - t0) / 1e9;
        List<Long> ts = new ArrayList<>(times); Collections.sort(ts);
        int total = conns * workers;
        int stallN = stalls.values().stream().mapToInt(AtomicInteger::get).sum();
        int errN = errors.values().stream().mapToInt(AtomicInteger::get).sum();
        System.out.printf("RESULT mode=%s workers=%d conns/worker=%d total=%d ok=%d stalls=%d errors=%d wall=%.2fs%n",
                mode, workers, conns, total, ok.get(), stallN, errN, wall);
        if (!ts.isEmpty())
            System.out.printf("  login+ping ms: p50=%.1f p90=%.1f p99=%.1f max=%.1f mean=%.1f%n",
                    ts.get(ts.size() / 2) / 1000.0, ts.get((int) (ts.size() * 0.9)) / 1000.0,
                    ts.get(Math.min(ts.size() - 1, (int) (ts.size() * 0.99))) / 1000.0, ts.get(ts.size() - 1) / 1000.0,
                    ts.stream().mapToLong(x -> x).average().orElse(0) / 1000.0);
        System.out.println("  stalls by step: " + new TreeMap<>(stalls));
        System.out.println("  errors: " + new TreeMap<>(errors));
        System.out.println("  full handshakes (checkServerTrusted calls): " + trustCalls.get() + " of " + total);
        TreeMap<String, Long> cs = new TreeMap<>(); counters.forEach((k, v) -> cs.put(k, v.get()));
        System.out.println("  counters: " + cs);
    }
}
