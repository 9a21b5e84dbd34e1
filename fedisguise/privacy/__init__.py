"""Privacy beside the disguises: DP-SGD through Opacus (dp.py) and the privacy figures a
run reports (figures.py: visual privacy, misusability, VFE, PSNR/SSIM).
"""
