from tortoise import BaseDBAsyncClient

RUN_IN_TRANSACTION = True


async def upgrade(db: BaseDBAsyncClient) -> str:
    return """
        ALTER TABLE "workflows" ADD "error_code" VARCHAR(64) NOT NULL DEFAULT '';
        ALTER TABLE "workflows" ADD "error_message" VARCHAR(500) NOT NULL DEFAULT '';"""


async def downgrade(db: BaseDBAsyncClient) -> str:
    return """
        ALTER TABLE "workflows" DROP COLUMN "error_code";
        ALTER TABLE "workflows" DROP COLUMN "error_message";"""


MODELS_STATE = (
    "eJztmmFv2jAQhv8KyqdN6qqSUlZN0yRK6cZGYaLtVqmqIpOYEDWxqeOMVlP/+2yTECfELN"
    "mAJlK+lHK+S+zH5/i9mN+ahy3o+ocDbGsfGr81BDzI/pHNBw0NzOexkRsomLjCz8W2MICJ"
    "TwkwKbNNgetDZrKgbxJnTh2MmBUFrsuN2GSODrJjU4CcxwAaFNuQziBhDXf3zOwgCz5Bn3"
    "+90xaYPExdvOC3MgkEFFoGoNo9d5w/GFMHulai/47FXYXdoM9zYevOALkQnrwjE8PEbuCh"
    "2Hv+TGcYrdxZP7nVhggSfkNpaLznIYHItBwFM1ASwFX3rdhgwSkIXA5I+zgNkMm5NELMCC"
    "4Mx/qkFaBmYsSJO4j6YuAeeDJciGw6Y1+P2y/LIcYAll787j864+6XzvjNcfstvyFm07ac"
    "y2HYooumF3EJQMHyImIipPyAvg9suA75Gj7RbMhSyHZIR4YYdZx6EesI4L9R3UDxund7zT"
    "vt+f6jK9N7c9m5FWC957BlMBp+jtwl2t3B6ExQjqkKIAXyNvLfH092bTjfXp7qefJUV+ep"
    "/jZF0KeABn4RhnHEHilaGMGtUWzmWe1N9WpvttMUCQ6QZaDAm0CyzrKPFCs8HZYCynpfzm"
    "XOusQ+3unN1vvW6XG7dcpcRF9WlvcbCPeH1yl80g61Bu/CxUCBLxmWgjflcTvLx3hHoo4H"
    "D/mf/9mNNtA6H92cDXqN7+Net3/VHw0TT8plIzcxg0PFwMe9ziDFN1IDRrFdPhVWlU1oF1"
    "s7103Th8ydXZZaqdTFBDo2+gafBd8+6yVAZtYGFMqan9Klysf1JcqPyBprNQIWK02ZThs2"
    "TDY4uEzObueq2znvaQLoBJgPC0AsI0GWt2Adpywr3/UmT/fSFoCYcLLCkfB+h4AvQ0mVod"
    "wvY7WlVu+hJNuBgk9K9vTGQDC7/32t8svwKNik8sU8FSAc+Vfz0bp9HcVuRyHKUAHqKkkK"
    "qQrFfVdJtTqt1WmtTsuSnbU6rdVptjpdAc6QpzJ8tT6NBrePV8x4wVIgpBjMrVp8vrb4lC"
    "ckL2U5pppP0HYrB9d2S8mVN1XylSgJEOKYyqvmK6c7m+URndShxUrJVcAeU3B7uacf5Uk+"
    "/UidfbwtiRASggkjZBXimIyqIsztPxGXTJRHmH+D+SoHmdvjeXKUJzmZl5KoaKuLyn0WlZ"
    "IiLcI3GVbzTfBdKzPVZVI8EdEPXpJTcBZGXXwbQxeIsa3zTv6mpnxCVFVyJhJRPjL4dwbS"
    "6USFOOyyWO5A4pgzLaNUDlsONhXKIPbZZZVcqBZWCuLM8ixDBodV7f9VwmV496qucX9B4o"
    "cLJa8GkUKqWeHqJyc59AfzUuoP0ZbcH/nSKAAxdK8mwGYuAdfcIOCaGQJOdVT19Wo0LHpU"
    "dYPYAO8sx6QHDdfx6X05sW6gyEe9+eAqfUbFKWCf2kRcRVzgrJjI2P728vIHBO0cLg=="
)
