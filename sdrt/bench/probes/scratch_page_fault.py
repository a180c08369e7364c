"""Writing 1 GiB into a fresh file mapping: page by page, or with MAP_POPULATE; pwrite; anonymous memory.

    python scratch_page_fault_probe.py   (the files go to /work/big; unlinked at once)
"""
import mmap, os, time, numpy as np, tempfile
N=1<<30
src=np.random.default_rng(0).standard_normal(N//4//16, dtype=np.float32)
def mk():
    fd, p = tempfile.mkstemp(dir="/work/big"); os.unlink(p); os.posix_fallocate(fd, 0, N); return fd
# 1 plain mmap write
fd=mk(); m=mmap.mmap(fd, N); a=np.frombuffer(m, np.float32)
t=time.perf_counter()
for i in range(16): a[i*len(src):(i+1)*len(src)]=src
print("mmap first write", round(time.perf_counter()-t,2)); del a; m.close(); os.close(fd)
# 2 MAP_POPULATE
fd=mk(); t=time.perf_counter(); m=mmap.mmap(fd, N, flags=mmap.MAP_SHARED|mmap.MAP_POPULATE); t1=time.perf_counter()-t; a=np.frombuffer(m, np.float32)
t=time.perf_counter()
for i in range(16): a[i*len(src):(i+1)*len(src)]=src
print("populate", round(t1,2), "then write", round(time.perf_counter()-t,2)); del a; m.close(); os.close(fd)
# 3 pwrite then mmap read
fd=mk(); t=time.perf_counter()
for i in range(16): os.pwrite(fd, src.data, i*src.nbytes)
t1=time.perf_counter()-t
m=mmap.mmap(fd, N, prot=mmap.PROT_READ); a=np.frombuffer(m, np.float32); t=time.perf_counter(); s=float(a[::1024].sum()); t2=time.perf_counter()-t
t=time.perf_counter(); b=a.copy(); t3=time.perf_counter()-t
print("pwrite", round(t1,2), "mapped read strided", round(t2,2), "full read", round(t3,2)); del a,b; m.close(); os.close(fd)
# 4 anon
t=time.perf_counter(); a=np.empty(N//4, np.float32)
for i in range(16): a[i*len(src):(i+1)*len(src)]=src
print("anon first write", round(time.perf_counter()-t,2))
