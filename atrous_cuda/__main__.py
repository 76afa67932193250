"""python -m atrous_cuda {bench,info,demo,wavenet-demo}"""
import json
import sys


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m atrous_cuda {bench,info,demo,wavenet-demo} [options]\n"
              "  bench         correctness check + throughput table, ours vs torch, on every device present\n"
              "  info          versions, how the extension was built, CPU ISA and GPU in use (--json for machines)\n"
              "  demo          train a small DeepLabV3 with and without dilation on synthetic data (CPU, minutes)\n"
              "  wavenet-demo  train a small pitch-conditioned WaveNet on synthetic melodies, generate one, write\n"
              "                WAVs and a plot, report its pitch accuracy and the generation speed (CPU, minutes)")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "bench":
        from .bench import main as bench_main
        return bench_main(rest)
    if command == "info":
        from . import _info
        if rest not in ([], ["--json"]):
            print(f"python -m atrous_cuda info: unexpected arguments {rest}; expected nothing or --json",
                  file=sys.stderr)
            return 2
        info = _info.collect()
        print(json.dumps(info, indent=2) if rest else _info.format_text(info))
        return 1 if info["load_error"] else 0
    if command == "demo":
        from .demo import main as demo_main
        return demo_main(rest)
    if command == "wavenet-demo":
        from .wavenet_demo import main as wavenet_demo_main
        return wavenet_demo_main(rest)
    print(f"python -m atrous_cuda: unknown command '{command}'; expected 'bench', 'info', 'demo' or 'wavenet-demo'",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
